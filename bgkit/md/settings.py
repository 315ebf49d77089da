"""Settings of a reference-MD dataset (all replicas), checked before anything is written."""
from __future__ import annotations

import math
from dataclasses import dataclass

from bgkit import BgkitError

__all__ = ["DEFAULT_FRICTION", "MDSettings"]

#: friction (1/ps) for systems whose system.yaml sets no md.friction_per_ps
DEFAULT_FRICTION = 1.0
#: the most replicas (folders) and replica-exchange temperatures (OpenMM contexts per replica) of one dataset
MAX_REPLICAS = 1024
MAX_TEMPERATURES = 256
#: the most frames a dataset may hold (all replicas)
MAX_FRAMES = 10**9


@dataclass(frozen=True)
class MDSettings:
    """Settings of one reference-MD dataset (all replicas)."""

    system: str
    ns: float  #: production length per replica, ns
    replicas: int = 1
    seed: int = 0
    step_fs: float = 1.0
    friction_per_ps: float = 1.0
    save_every_ps: float = 1.0
    chunk_ps: float = 1000.0
    equilibrate_ps: float = 100.0
    platform: str | None = None
    #: parallel tempering: ascending temperatures (K), the first the system's; None for plain MD
    temperatures_K: list[float] | None = None

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.save_every_ps * 1000.0 / self.step_fs))

    @property
    def frames_per_chunk(self) -> int:
        return int(round(self.chunk_ps / self.save_every_ps))

    @property
    def total_frames(self) -> int:
        """Frames per replica that ``ns`` asks for."""
        return int(round(self.ns * 1000.0 / self.save_every_ps))

    def chunk_frames(self, frames_done: int) -> int:
        """Frames of the next chunk of a replica that holds ``frames_done`` frames (0: complete)."""
        return max(0, min(self.frames_per_chunk, self.total_frames - frames_done))

    def validate(self) -> None:
        """Raise BgkitError naming the first bad setting (before anything is written)."""
        numbers = {"--ns": self.ns, "--step": self.step_fs, "--friction": self.friction_per_ps,
                   "--save-every": self.save_every_ps, "--chunk": self.chunk_ps, "--equilibrate": self.equilibrate_ps}
        for option, value in numbers.items():
            if not math.isfinite(value):
                raise BgkitError(f"{option} must be a finite number, got {value}")
        if not self.ns > 0:
            raise BgkitError("--ns must be positive")
        if self.replicas < 1:
            raise BgkitError("--replicas must be at least 1")
        if self.seed < 0:
            raise BgkitError(f"--seed must be >= 0, got {self.seed}")
        if self.friction_per_ps < 0:
            raise BgkitError(f"--friction must be >= 0 (1/ps), got {self.friction_per_ps}")
        for option, value in (("--step", self.step_fs), ("--save-every", self.save_every_ps), ("--chunk", self.chunk_ps)):
            if not value > 0:
                raise BgkitError(f"{option} must be positive, got {value}")
        if self.equilibrate_ps < 0:
            raise BgkitError(f"--equilibrate must be >= 0, got {self.equilibrate_ps}")
        if self.replicas > MAX_REPLICAS:
            raise BgkitError(f"--replicas must be <= {MAX_REPLICAS}, got {self.replicas}")
        if self.temperatures_K is not None and len(self.temperatures_K) > MAX_TEMPERATURES:
            raise BgkitError(f"--replica-exchange must be <= {MAX_TEMPERATURES} temperatures, got "
                             f"{len(self.temperatures_K)}")
        for what, ratio in (("--save-every / --step", self.save_every_ps * 1000.0 / self.step_fs),
                            ("--ns / --save-every", self.ns * 1000.0 / self.save_every_ps),
                            ("--chunk / --save-every", self.chunk_ps / self.save_every_ps),
                            ("--equilibrate / --step", self.equilibrate_ps * 1000.0 / self.step_fs)):
            if not ratio < 1e15:
                raise BgkitError(f"{what} is {ratio:.3g}: too many steps or frames")
        if self.total_frames * self.replicas > MAX_FRAMES:
            raise BgkitError(f"--ns {self.ns} x --replicas {self.replicas} at --save-every {self.save_every_ps} ps is "
                             f"{self.total_frames * self.replicas:,} frames, more than {MAX_FRAMES:,}: too many frames")
        if self.total_frames < 1:
            raise BgkitError(f"--ns {self.ns} is shorter than one frame (--save-every {self.save_every_ps} ps)")
        if abs(self.steps_per_frame * self.step_fs - self.save_every_ps * 1000.0) > 1e-6:
            raise BgkitError(f"--save-every {self.save_every_ps} ps is not a whole number of {self.step_fs} fs steps")
        if abs(self.frames_per_chunk * self.save_every_ps - self.chunk_ps) > 1e-6:
            raise BgkitError(f"chunk length {self.chunk_ps} ps is not a whole number of frames")
        t = self.temperatures_K
        if t is not None and not all(math.isfinite(x) for x in t):
            raise BgkitError(f"replica-exchange temperatures must be finite, got {t}")
        if t is not None and (len(t) < 2 or any(b <= a for a, b in zip(t, t[1:]))):
            raise BgkitError("replica-exchange temperatures must be at least 2 and strictly increasing")
