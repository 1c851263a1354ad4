"""How busy the card was while a shard's batches ran: NVML's utilisation (the share of each sample
period in which a kernel ran), sampled in a thread. Only on CUDA with NVML reachable (`torch.cuda.utilization`
needs the nvidia-ml-py package); elsewhere `share` is None."""

from __future__ import annotations

import contextlib
import threading

from bertflow.model import cards

EVERY_SECONDS = 0.05


class BusySampler:
    """`with BusySampler(device) as busy: ...` then `busy.share` (0..1, or None when not measured)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BusySampler:
        card = cards.current(self.device)
        if card is not None:
            import torch

            with contextlib.suppress(Exception):  # no NVML (nvidia-ml-py) here: not measured
                torch.cuda.utilization(card)
                self._thread = threading.Thread(target=self._run, args=(card,), daemon=True, name="bertflow-busy")
                self._thread.start()
        return self

    def _run(self, card: int) -> None:
        import torch

        while not self._stop.wait(EVERY_SECONDS):
            try:
                self.samples.append(torch.cuda.utilization(card))
            except Exception:  # NVML went away: stop sampling, keep what was measured
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None
