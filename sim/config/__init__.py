"""Scenarios: the schema, YAML with line numbers, distributions, personas, and building a world from them."""
