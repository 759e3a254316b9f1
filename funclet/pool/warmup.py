"""Warmup — the only step a request waits for — and building code images ahead of it.

A warmup binds the code image (built once per code hash) and the runtime into a cold sandbox,
sets the function's memory limit on its cgroup and its egress policy on the bridge's firewall, and
has the runner start the runtime (or hand the function to the standby runtime waiting there). A
warmup that fails resets the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

import structlog

from easyfaas.codezip import CodeArchiveError
from easyfaas.egress import EgressPolicy, EgressPolicyError
from easyfaas.errors import FaasError, InvalidParameterValue, ResourceConflict, ServiceError
from easyfaas.models import CodePrepareRequest, CodePrepareResponse, SandboxState, WarmupRequest, WarmupResponse
from funclet.code_source import load_code
from funclet.pool.kernel import CodeImages
from funclet.pool.lifecycle import Lifecycle
from funclet.pool.registry import Registry
from funclet.pool.settings import MiB
from funclet.pool.slots import Slots
from funclet.pool.standby import StandbyKeeper
from funclet.runner_link import LinkClosed
from funclet.sandbox.codeimage import CodeImageError
from funclet.sandbox.secretfs import write_secrets
from runner.control import Op
from runner.environment import runtime_env

log = structlog.get_logger(__name__)

MAX_MEMORY_MB = 1 << 20


class Warmups:
    def __init__(self, registry: Registry, slots: Slots, lifecycle: Lifecycle, standby: StandbyKeeper,
                 images: CodeImages) -> None:
        self._registry = registry
        self._slots = slots
        self._lifecycle = lifecycle
        self._standby = standby
        self.images = images
        self._settings = registry.settings

    async def warmup(self, req: WarmupRequest) -> WarmupResponse:
        reg = self._registry
        s = self._settings
        sb = reg.get(req.ContainerID)
        cfg = req.Configuration
        code_hash = code_hash_hex(cfg.CodeSha256)
        runtime = req.RuntimeConfiguration
        runtime_dir = self._slots.runtime_dir(runtime)
        if not (1 <= cfg.MemorySize <= MAX_MEMORY_MB):
            raise InvalidParameterValue(f"MemorySize {cfg.MemorySize} MB is out of range")
        try:
            egress = EgressPolicy.from_wire(cfg.Network, "Configuration.Network")
        except EgressPolicyError as exc:
            raise InvalidParameterValue(str(exc)) from None
        network = self._lifecycle.network
        if network is None and not egress.is_none:
            raise InvalidParameterValue("Configuration.Network: this funclet's sandboxes have no network "
                                        "(--network none), so no egress can be allowed")
        async with sb.lock:
            if sb.state is not SandboxState.COLD:
                raise ResourceConflict(f"container {sb.id} is {sb.state.value}, not cold")
            sb.epoch = reg.next_epoch()
            sb.identity = req.Identity
            sb.function_brn = cfg.FunctionArn
            sb.last_exit = None
            sb.current_event = "event_warmup"
            reg.set_state(sb, SandboxState.WARMUP)
            started = time.monotonic()
            new_image = not self.images.is_built(code_hash)
            try:
                image = await asyncio.wait_for(
                    self.images.ensure(code_hash, lambda: load_code(req.Code, max_size=s.max_code_size, guard=s.outbound_guard)),
                    s.warmup_timeout)
                if new_image:
                    reg.counters["code_image_built"] += 1
                self._slots.bind_code(sb, image.mountpoint, code_hash)
                self._slots.bind_runtime(sb, runtime_dir)
                env = runtime_env(cfg, runtime)
                if req.Secrets:
                    write_secrets(sb.slot_dir / "secrets", sb.uid, req.Secrets)
                    if cfg.SecretsAsEnvironment:
                        env = {**env, **req.Secrets}
                assert sb.cgroup is not None and sb.link is not None
                # The function's MemorySize is its sandbox's limit: the kernel OOM-kills inside this
                # cgroup only, whatever the rest of the box is doing.
                sb.memory_limit = cfg.MemorySize * MiB
                sb.cgroup.set_memory_limit(sb.memory_limit)
                sb.oom_base = sb.oom_seen = sb.cgroup.oom_kills()
                if network is not None and sb.nic is not None and not egress.is_none:
                    # Before the function's code runs; the reset takes it away again.
                    sb.egress = True
                    await self._lifecycle.net(network.set_egress, sb.nic, egress)
                # The runner hands a matching standby runtime the function, or replaces it.
                used_standby, sb.standby = sb.standby == runtime.Name, ""
                reply = await sb.link.request(
                    {"op": Op.START, "runtime": runtime.to_dict(), "env": env,
                     "function": {"name": cfg.FunctionName, "version": cfg.Version, "brn": cfg.FunctionArn,
                                  "handler": cfg.Handler, "memory": cfg.MemorySize, "timeout": cfg.Timeout}},
                    {Op.STARTED}, s.warmup_timeout)
            except BaseException as exc:
                log.warning("warmup_failed", container=sb.id, error=str(exc) or type(exc).__name__)
                await self._lifecycle.reset_locked(sb)
                raise _warmup_error(sb.id, exc) from None
            sb.runtime_pid = int(reply.get("pid") or 0)
            exited = sb.last_exit is not None and sb.last_exit.Epoch == sb.epoch
            if sb.state is SandboxState.WARMUP:
                reg.set_state(sb, SandboxState.STOPPED if exited else SandboxState.WARM)
            sb.current_event = ""
            init_error = None if reply.get("ok") else (reply.get("error") or {"errorMessage": "runtime failed to start",
                                                                                 "errorType": "Runtime.InitError"})
            log.info("warmup_done", container=sb.id, function=cfg.FunctionArn, code=code_hash[:12],
                     ms=round((time.monotonic() - started) * 1000, 2), init_error=bool(init_error),
                     memory_mb=cfg.MemorySize, epoch=sb.epoch, standby=used_standby)
            if used_standby:
                self._standby.used(ok=not init_error)
            if len(self.images.images()) > self.images.max_images:
                reg.spawn_task(self.trim_images())
            return WarmupResponse(Container=reg.info(sb), InitError=init_error)

    async def prepare_code(self, req: CodePrepareRequest) -> CodePrepareResponse:
        """Build the code's image now, so the first warmup of a function using it does not wait for it."""
        code_hash = code_hash_hex(req.CodeSha256)
        if self._registry.closing:
            raise ServiceError("the funclet is stopping")
        built = not self.images.is_built(code_hash)
        try:
            image = await asyncio.wait_for(
                self.images.ensure(code_hash, lambda: load_code(req.Code, max_size=self._settings.max_code_size,
                                                     guard=self._settings.outbound_guard)),
                self._settings.warmup_timeout)
        except asyncio.TimeoutError:
            raise ServiceError(f"building the image of code {code_hash[:12]} timed out") from None
        except CodeImageError as exc:
            raise ServiceError(str(exc)) from None
        except CodeArchiveError as exc:
            raise InvalidParameterValue(f"code {code_hash[:12]}: {exc}") from None
        if built:
            self._registry.counters["code_image_built"] += 1
        await self.trim_images()
        return CodePrepareResponse(CodeSha256=req.CodeSha256, ImageSize=image.size, Built=built)

    async def trim_images(self) -> None:
        evicted = await self.images.trim({sb.code_hash for sb in self._registry if sb.code_hash})
        if evicted:
            log.info("code_images_trimmed", evicted=len(evicted), kept=len(self.images.images()))


def code_hash_hex(code_sha256: str) -> str:
    """The hex digest of a base64 ``CodeSha256``; refused unless it is a SHA-256."""
    try:
        raw = base64.b64decode(code_sha256, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidParameterValue("Configuration.CodeSha256 must be the base64 SHA-256 of the code zip")
    return raw.hex()


def _warmup_error(container_id: str, exc: BaseException) -> BaseException:
    """What a failed warmup answers: FaasErrors as they are, the rest as a ServiceError."""
    if isinstance(exc, FaasError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, LinkClosed)):
        return ServiceError(f"warm up container {container_id} failed: {str(exc) or 'timed out'}")
    if isinstance(exc, OSError):
        return ServiceError(f"warm up container {container_id} failed: {exc.strerror or exc}"
                            f"{' (' + exc.filename + ')' if exc.filename else ''}")
    return ServiceError(f"warm up container {container_id} failed: {exc}")

