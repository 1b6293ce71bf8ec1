"""An event's topic and type depend on each other: tell PostgreSQL's planner so (busapp/store/operations.py)."""

from django.db import migrations

from busapp.store.operations import CreateStatistics


class Migration(migrations.Migration):
    dependencies = [("busapp", "0017_words_and_newest_check")]

    operations = [
        CreateStatistics(
            name="event_topic_type",
            model_name="event",
            fields=["topic", "event_type"],
            kinds=["dependencies", "mcv"],
        ),
    ]
