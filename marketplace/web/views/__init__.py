"""The web UI's views, one module per area (catalog, deployments, playground, keys, organisation,
platform). Each is short: load, check who may see it, call one service function, render."""
