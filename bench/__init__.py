"""`make bench`: AI Spine beside the bare-Kafka floor and a Celery peer (see README.md)."""
