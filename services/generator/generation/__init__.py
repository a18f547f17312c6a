"""The generation use case, shared by ``synthrad generate``, REST, gRPC and batch jobs (no Ray in here).

* :mod:`.request` — :class:`GenerationRequest`, what a caller asks for;
* :mod:`.plan` — checking it and turning it into a :class:`GenerationPlan` (the prompt is parsed there, once);
* :mod:`.service` — :class:`GenerationService`: plan, run in chunks (windowed, retried), store as a batch;
* :mod:`.generators` — the :class:`Generators` interface and the in-process :class:`LocalGenerators`.
"""

from .generators import Generators, LocalGenerators
from .plan import GenerationPlan, check_request, make_plan
from .request import MAX_PROMPT_CHARS, GenerationRequest, InvalidPrompt, InvalidRequest
from .service import ChunkObserver, GenerationService, RetryPolicy, add_chunk

__all__ = ["ChunkObserver", "GenerationPlan", "GenerationRequest", "GenerationService", "Generators",
           "InvalidPrompt", "InvalidRequest", "LocalGenerators", "MAX_PROMPT_CHARS", "RetryPolicy", "add_chunk", "check_request",
           "make_plan"]
