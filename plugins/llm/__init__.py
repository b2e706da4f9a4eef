"""LLM agents: backends, value readers and the policy that makes a population row speak."""
