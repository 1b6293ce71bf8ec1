// One colour per topic wherever a topic is drawn (dashboard charts, live sparklines), chosen
// from its name, not its place in a list: adding a topic never repaints the others.

const PALETTE = [
  "#1f5fbf", "#1b7a43", "#a35a00", "#7b3fb5", "#b3261e", "#0f7c8c",
  "#5b6577", "#9c2f6e", "#4f6b00", "#2e4a9e", "#8a5a2b", "#00796b",
];

// FNV-1a over the name's UTF-16 code units: the same name, the same colour, on every page.
export function topicColor(topic) {
  let hash = 0x811c9dc5;
  for (let index = 0; index < topic.length; index += 1) {
    hash ^= topic.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return PALETTE[hash % PALETTE.length];
}
