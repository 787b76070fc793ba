"""A thin helper over the generated `glimpse.v1.Generation` stubs.

It only builds request messages and reads response messages: defaults, limits and error messages
are the server's (an invalid request raises `grpc.RpcError` with INVALID_ARGUMENT and a message
naming the field, the limit and the value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import grpc

from glimpse_client.v1 import generation_pb2 as pb
from glimpse_client.v1 import generation_pb2_grpc as pb_grpc

Prompt = Union[str, Sequence[int]]


@dataclass(frozen=True)
class KvCache:
    """A request's KV eviction policy; `None` knobs take the server's or the policy's defaults.

    `policy` is one of `full`, `streaming_llm`, `snapkv`, `pyramidkv`, `lookahead` (the last needs
    a server started with `--lookahead-module`), or `None` for the server's default policy.
    """

    policy: Optional[str] = None
    budget: Optional[int] = None
    window: Optional[int] = None
    pool_kernel: Optional[int] = None
    pool: Optional[str] = None
    sinks: Optional[int] = None
    beta: Optional[float] = None

    def to_proto(self) -> pb.KvCachePolicy:
        """The `KvCachePolicy` message; raises `ValueError` naming an unknown policy or pool."""
        message = pb.KvCachePolicy(
            policy=_enum(pb.KvPolicy, "KV_POLICY_", "policy", self.policy),
            pool=_enum(pb.PoolKind, "POOL_KIND_", "pool", self.pool),
        )
        for name in ("budget", "window", "pool_kernel", "sinks", "beta"):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        return message


def _enum(enum, prefix: str, field_name: str, name: Optional[str]) -> int:
    """The enum value `PREFIX` + `NAME` (upper-cased), or UNSPECIFIED for `None`."""
    if name is None:
        return enum.Value(prefix + "UNSPECIFIED")
    try:
        return enum.Value(prefix + name.upper())
    except ValueError:
        known = [n[len(prefix):].lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        raise ValueError(f"KvCache.{field_name}: {name!r} is not one of {known}") from None


@dataclass
class Completion:
    """A finished generation: the text and token ids streamed, and the server's `Final` message
    (finish reason, usage with KV entries kept and blocks freed, timings, applied policy)."""

    text: str
    token_ids: list = field(default_factory=list)
    final: Optional[pb.Final] = None


class Client:
    """A channel to a running `glimpse serve`; `endpoint` is `host:port` (an `http://` scheme is
    dropped). Usable as a context manager, which closes the channel."""

    def __init__(self, endpoint: str, timeout: Optional[float] = 60.0):
        target = endpoint.split("://", 1)[-1].rstrip("/")
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.GenerationStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int] = None,
        min_tokens: int = 0,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        kv_cache: Optional[KvCache] = None,
        request_id: Optional[str] = None,
        **sampling,
    ) -> Iterator[pb.GenerateResponse]:
        """Streams `Generate`: `GenerateResponse` messages, each holding a `chunk` (new token ids
        and text) until the last, which holds the `final` summary. `prompt` is text or token ids;
        `sampling` takes `SamplingParameters` fields (`temperature`, `top_k`, `top_p`, `min_p`,
        `repetition_penalty`, `presence_penalty`, `frequency_penalty`, `seed`, `logprobs`,
        `top_logprobs`); unset ones take the model's `generation_config.json`, else neutral values.
        Closing the iterator early cancels the call, and the server frees the request's blocks."""
        request = pb.GenerateRequest(
            sampling=pb.SamplingParameters(**sampling),
            stop=list(stop),
            min_tokens=min_tokens,
            ignore_eos=ignore_eos,
        )
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        if max_tokens is not None:
            request.max_tokens = max_tokens
        if kv_cache is not None:
            request.kv_cache.CopyFrom(kv_cache.to_proto())
        if request_id is not None:
            request.request_id = request_id
        calls = self._stub.Generate(request, timeout=self.timeout)
        try:
            yield from calls
        finally:
            calls.cancel()

    def generate(self, prompt: Prompt, **options) -> Completion:
        """Runs `stream` to the end and gathers it; takes the same arguments."""
        completion = Completion(text="")
        for message in self.stream(prompt, **options):
            if message.HasField("chunk"):
                completion.text += message.chunk.text
                completion.token_ids.extend(message.chunk.token_ids)
            else:
                completion.final = message.final
        return completion

    def model_info(self) -> pb.ModelInfo:
        """The loaded model, KV cache and eviction defaults."""
        return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)

    def tokenize(self, text: str, add_special_tokens: Optional[bool] = None) -> list:
        """Token ids of `text`, as `Generate` would see it (BOS added unless told otherwise)."""
        request = pb.TokenizeRequest(text=text)
        if add_special_tokens is not None:
            request.add_special_tokens = add_special_tokens
        return list(self._stub.Tokenize(request, timeout=self.timeout).token_ids)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of `token_ids`, special tokens skipped."""
        request = pb.DetokenizeRequest(token_ids=list(token_ids))
        return self._stub.Detokenize(request, timeout=self.timeout).text
