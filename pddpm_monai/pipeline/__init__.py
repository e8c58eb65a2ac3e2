"""End-to-end pipelines: ``pddpm detect`` on a new scan and the demo."""
