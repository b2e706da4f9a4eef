"""Language-model agents: the backend contract, the response cache, questionnaires, a loopback test server.

The contract (``sim.llm.contract``) is re-exported here: a backend plugin
imports ``from sim.llm import ChatRequest, ChatResponse`` (and ``ChoiceRequest, ChoiceResponse`` for
the optional choice call).
"""

from .contract import (BudgetExhausted, ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse, LLMBackend, Sampling,
                       ValueReader, can_choose, choose, complete)

__all__ = ["BudgetExhausted", "ChatRequest", "ChatResponse", "ChoiceRequest", "ChoiceResponse", "LLMBackend",
           "Sampling", "ValueReader", "can_choose", "choose", "complete"]
