"""What every layer shares: the config tree, the error hierarchy, filesystem helpers, extras checks."""
