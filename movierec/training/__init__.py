"""The glue that trains, evaluates and publishes: Ray, the flow's configuration, evaluation, export and
packaging. Called by ``movierec.pipeline`` (the flow's one entry point).

May import every other layer; nothing but the pipeline, the reports and the flow imports it."""
