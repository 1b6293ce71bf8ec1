"""Pages, thin: check the right, call one service or selector, render. One module per area."""
