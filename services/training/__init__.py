"""The training service: Models, versions, runs, the training operator and the trainer entrypoint."""
