"""The node's YAML file: one per node, validated before anything changes.

Vocabulary from Cisco IOS and FRR nhrpd (tunnel source/key, nhrp network-id,
holdtime, nhs, map, map multicast, redirect, shortcut, registration
no-unique, authentication). `dmvpn check FILE` prints every error with its
path; the daemon refuses a file with any.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dmvpn.nhrp import EngineConfig, NhsConfig, StaticMap


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently become a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tunnel(_Strict):
    """`tunnel source` (the NBMA address) and `tunnel key`."""

    source: IPv4Address
    key: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None


class Nhs(_Strict):
    """`ip nhrp nhs ADDRESS nbma NBMA priority P` (lower is preferred)."""

    address: IPv4Address
    nbma: IPv4Address
    priority: Annotated[int, Field(ge=0, le=255)] = 0


class Map(_Strict):
    """`ip nhrp map ADDRESS NBMA`: a static binding."""

    address: IPv4Address
    nbma: IPv4Address


class Nhrp(_Strict):
    network_id: Annotated[int, Field(ge=1, le=0xFFFFFFFF)]
    holdtime: Annotated[int, Field(ge=3, le=65535)] = 7200
    nhs: list[Nhs] = []
    max_nhs: Annotated[int, Field(ge=1)] | None = None
    map: list[Map] = []
    # `ip nhrp map multicast dynamic|nhs|NBMA`: where broadcast and multicast
    # frames are replicated.
    map_multicast: list[Literal["dynamic", "nhs"] | IPv4Address] = []
    redirect: bool = False
    shortcut: bool = False
    registration_no_unique: bool = False
    # Phase 1 spokes never resolve (`resolution: false`).
    resolution: bool = True
    authentication: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    auth_failure: Literal["error", "drop"] = "error"
    max_send: Annotated[int, Field(ge=1)] = 100_000
    server: bool | None = None  # default: an interface without NHSes is a hub

    @field_validator("authentication")
    @classmethod
    def _ascii(cls, v: str | None) -> str | None:
        if v is not None and not v.isascii():
            raise ValueError("must be ASCII (Cisco cleartext password)")
        return v


class Interface(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
    address: IPv4Interface  # tunnel address with prefix, e.g. 10.0.0.11/24
    mtu: Annotated[int, Field(ge=576, le=9000)] = 1400
    tunnel: Tunnel
    nhrp: Nhrp

    @model_validator(mode="after")
    def _consistent(self) -> Interface:
        net = self.address.network
        for i, nhs in enumerate(self.nhrp.nhs):
            if nhs.address not in net:
                raise ValueError(f"nhrp.nhs.{i}.address {nhs.address} is outside {net}")
            if nhs.address == self.address.ip:
                raise ValueError(f"nhrp.nhs.{i}.address is this interface's own address")
        for i, m in enumerate(self.nhrp.map):
            if m.address not in net:
                raise ValueError(f"nhrp.map.{i}.address {m.address} is outside {net}")
        return self

    @property
    def is_hub(self) -> bool:
        return self.nhrp.server if self.nhrp.server is not None else not self.nhrp.nhs

    def engine_config(self) -> EngineConfig:
        n = self.nhrp
        return EngineConfig(
            protocol_address=self.address.ip,
            nbma_address=self.tunnel.source,
            server=self.is_hub,
            nhs=tuple(NhsConfig(x.address, x.nbma, x.priority) for x in n.nhs),
            max_nhs=n.max_nhs,
            static_maps=tuple(StaticMap(m.address, m.nbma) for m in n.map),
            holding_time=n.holdtime,
            registration_unique=not n.registration_no_unique,
            resolution=n.resolution,
            redirect=n.redirect,
            shortcut=n.shortcut,
            authentication=n.authentication.encode() if n.authentication else None,
            auth_failure=n.auth_failure,
            mtu=self.mtu,
            max_send=n.max_send,
        )


class Route(_Strict):
    """A route the daemon installs into the node's kernel table."""

    prefix: IPv4Network
    via: IPv4Address


class NodeConfig(_Strict):
    node: Annotated[str, Field(min_length=1, max_length=64)]
    interfaces: Annotated[list[Interface], Field(min_length=1)]
    routes: list[Route] = []
    # Where the management API listens (a UNIX socket).
    socket: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> NodeConfig:
        names = [i.name for i in self.interfaces]
        if len(set(names)) != len(names):
            raise ValueError("interface names must be unique")
        ids = [i.nhrp.network_id for i in self.interfaces]
        if len(set(ids)) != len(ids):
            raise ValueError("each interface needs its own nhrp.network_id")
        return self


class ConfigError(Exception):
    """A config file that cannot be used, with one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}")
    return out


def parse_config(data: Any, source: Path | str = "<config>") -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``, or ConfigError naming where it breaks."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from None


def load_config(path: Path) -> NodeConfig:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): expected a mapping of settings"])
    return parse_config(data, path)
