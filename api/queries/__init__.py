"""SQL of the API, one module per resource; identifiers come only from the catalog."""
