"""Service glue: settings, errors, blob storage, the CLI and the all-in-one runner."""
