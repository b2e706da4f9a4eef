"""Language-model agents: the backend contract, the response cache, questionnaires, a loopback test server.

The contract (``sim.llm.contract``) is re-exported here: a backend plugin
imports ``from sim.llm import ChatRequest, ChatResponse``.
"""

from .contract import BudgetExhausted, ChatRequest, ChatResponse, LLMBackend, Sampling, ValueReader, complete

__all__ = ["BudgetExhausted", "ChatRequest", "ChatResponse", "LLMBackend", "Sampling", "ValueReader", "complete"]
