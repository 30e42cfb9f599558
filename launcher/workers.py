"""The rollout workers as the driver sees them: their loops, and calls that outlive a worker's restart.

A worker whose actor dies is restarted by Ray (rollout.max_restarts) from its constructor's arguments: its engine
holds the weights it started from (model.path's, or the resumed checkpoint's), its prompt source goes on from the
cursor it recorded (rollout/worker.py), and its reservations come back when their lease expires. The driver waits
for the new actor (at most run.call_timeout_s, then an error naming the worker), sends it the current weights and
starts its loop again. An evaluation that meets a worker down waits for it the same way and runs again, and one
that ran on older weights than the run's (the worker came back after the last weight send) runs again on the
current ones: it never ends the run, and never scores weights other than the current version's.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("slipstream")
EVALUATION_ATTEMPTS = 3  # a worker that dies in as many evaluations in a row ends the run


class RolloutWorkers:
    def __init__(self, handles: list, max_restarts: int, timeout_s: float, send_weights: Callable[[], int]):
        """handles: the RolloutActor handles; send_weights(): the run's current weights to every worker, returns
        their version; timeout_s (run.call_timeout_s): any one call, and the wait for a restarted worker."""
        self.handles, self.max_restarts, self.timeout_s, self.send_weights = handles, max_restarts, timeout_s, \
            send_weights
        self.runs: list = []  # each worker's loop (`run`), once started
        self._restarting: dict[int, tuple] = {}  # worker -> (its __ray_ready__ call, deadline), while Ray restarts it
        self.restarts, self.evaluation_retries = 0, 0

    def get(self, ref):
        import ray

        return ray.get(ref, timeout=self.timeout_s)

    def start(self) -> None:
        self.runs = [w.run.remote() for w in self.handles]

    def check(self) -> None:
        """Never blocks (the driver calls it every batch wait): a worker whose loop ended because its actor died is
        waited for across calls, while the other workers and the buffered batches keep training going; once Ray
        has restarted it, it gets the current weights and its loop starts again. Any other end raises."""
        import ray

        live = [ref for i, ref in enumerate(self.runs) if i not in self._restarting]
        done, _ = ray.wait(live, num_returns=len(live), timeout=0) if live else ([], [])
        for ref in done:
            i = self.runs.index(ref)
            self._ended(i)
            self._restarting[i] = (self.handles[i].__ray_ready__.remote(), time.monotonic() + self.timeout_s)
        for i in list(self._restarting):
            self._poll_restart(i)

    def _ended(self, i: int) -> None:
        """Worker i's loop ended: return if its actor died (Ray restarts it), else raise the worker's error."""
        import ray
        from ray.exceptions import RayActorError

        try:
            ray.get(self.runs[i], timeout=self.timeout_s)
            raise RuntimeError(f"rollout worker {i} stopped before the run ended")
        except RayActorError as e:
            log.warning("rollout worker %d died (%s); waiting for Ray to restart it", i, str(e).splitlines()[0])

    def _poll_restart(self, i: int) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        ready, deadline = self._restarting[i]
        if not ray.wait([ready], timeout=0)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollout worker {i} did not come back within run.call_timeout_s="
                                   f"{self.timeout_s}s after it died")
            return
        try:
            ray.get(ready, timeout=self.timeout_s)
        except ActorDiedError as e:  # for good: no restart left
            raise RuntimeError(f"rollout worker {i} died and was not restarted (rollout.max_restarts="
                               f"{self.max_restarts} used up)") from e
        except RayActorError:  # still restarting: ask again
            self._restarting[i] = (self.handles[i].__ray_ready__.remote(), deadline)
            return
        del self._restarting[i]
        self._start_again(i, self.send_weights())  # a restarted worker holds the weights it started from

    def _start_again(self, i: int, version: int) -> None:
        self.runs[i] = self.handles[i].run.remote()
        self.restarts += 1
        log.warning("rollout worker %d restarted at version %d", i, version)

    def _restart(self, i: int) -> None:
        """check()'s restart of worker i, blocking until it is back (an evaluation needs it now)."""
        if i not in self._restarting:
            self._ended(i)
        self._restarting.pop(i, None)
        self._start_again(i, self.wait_for(i))

    def _revive(self, i: int) -> None:
        """After worker i failed a call or answered on older weights: restarted as by `check` if its loop has
        ended (its actor died: both calls fail together), else only sent the current weights."""
        import ray

        if self.runs and ray.wait([self.runs[i]], timeout=1.0)[0]:
            self._restart(i)
        else:
            self.wait_for(i)

    def wait_for(self, i: int) -> int:
        """Until worker i answers (Ray restarts it and it builds its engine), then the current weights to every
        worker; returns their version. Raises naming the worker if it is gone for good or does not come back."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                ray.get(self.handles[i].__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorDiedError as e:  # for good: no restart left
                raise RuntimeError(f"rollout worker {i} died and was not restarted (rollout.max_restarts="
                                   f"{self.max_restarts} used up)") from e
            except (RayActorError, GetTimeoutError) as e:  # restarting (or not answering yet)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rollout worker {i} did not come back within run.call_timeout_s="
                                       f"{self.timeout_s}s after it died") from e
                time.sleep(1.0)
        return self.send_weights()  # a restarted worker holds the weights it started from

    def evaluate(self, version: int, method: str, *args, **kwargs) -> dict:
        """An evaluation call (`evaluate`, `evaluate_set`) to worker 0, the others keep generating, on the weights
        of `version`: a worker down is waited for, one on older weights is sent the current ones, and the call runs
        again; a second result on older weights (a load failed) is kept with a warning."""
        from ray.exceptions import RayActorError

        attempt, resent = 0, False
        while True:
            attempt += 1
            try:
                out = self.get(getattr(self.handles[0], method).remote(*args, **kwargs))
            except RayActorError as e:
                if attempt >= EVALUATION_ATTEMPTS:
                    raise RuntimeError(f"rollout worker 0 died in {attempt} evaluation calls in a row") from e
                log.warning("evaluation on rollout worker 0 failed (%s); waiting for it", str(e).splitlines()[0])
            else:
                if out["version"] >= version or resent:
                    if out["version"] < version:
                        log.warning("rollout worker 0 evaluated weights of version %d, not %d (see its log)",
                                    out["version"], version)
                    return out
                log.warning("rollout worker 0 holds version %d, not %d (it restarted after the last weight send); "
                            "evaluating again on the current weights", out["version"], version)
                resent = True
            self.evaluation_retries += 1
            self._revive(0)

    def stats(self) -> list[dict]:
        """Each worker's counters; one that is down at the end (restarting) is reported so, not raised."""
        from ray.exceptions import RayActorError

        out = []
        for i, ref in enumerate([w.stats.remote() for w in self.handles]):
            try:
                out.append(self.get(ref))
            except RayActorError as e:
                out.append({"worker_id": i, "unavailable": str(e).splitlines()[0]})
        return out
