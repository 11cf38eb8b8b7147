"""The service behind the routes: one Estimator, the estimators derived from it for
per-request options, the worker pools, the request batcher, readiness and metrics.

A request is `estimate(upload, options)`: its bytes are decoded and its faces found and
cropped in the prepare pool (by an estimator derived for the request's detector and
`min_face`, sharing the loaded models), then its crops join the next model batch, keyed
by the options that change the model pass (TTA, age thresholds). Before `/readyz` says
ready, every prepare worker and the model worker have built their own detector and run
every model once (`Estimator.warm`), so the first requests are as fast as the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .. import images
from ..cards import ModelCard
from ..errors import AgegenderError, ImageTooLargeError, UnsupportedImageError
from ..faces import DETECTORS, detector_problem
from ..people import FrameReport, PeopleTracker, Person
from ..pipeline import Estimator, PreparedImage, describe_error
from ..results import Face, ImageResult
from .admission import Admission
from .errors import ApiError, shutting_down
from .metrics import Metrics
from .request_batching import Batcher, ShuttingDown
from .sessions import LiveSession, SessionOptions, Sessions
from .settings import ServeSettings
from .uploads import Upload

log = logging.getLogger(__name__)

MAX_LABEL = 200
DERIVED_CACHE = 32  # estimators kept for distinct per-request options
BUSY_POLL_S = 0.01  # how often DELETE looks whether the frame in flight is done
T = TypeVar("T")


@dataclass(frozen=True)
class EstimateOptions:
    """A request's options; None keeps the server's own (its EstimatorConfig's)."""

    detector: str | None = None
    min_face: int | None = None
    tta: bool | None = None
    age_thresholds: tuple[float, ...] | None = None

    def overrides(self) -> dict[str, Any]:
        """The EstimatorConfig fields this request changes."""
        out: dict[str, Any] = {}
        if self.detector is not None:
            out["detector"] = self.detector
        if self.min_face is not None:
            out["min_face"] = self.min_face
        if self.tta is not None:
            out["tta"] = self.tta
        if self.age_thresholds is not None:
            out["age_thresholds"] = self.age_thresholds
        return out


def label_of(filename: str | None) -> str:
    """The name a result is reported under: the client's file name, printable, short."""
    if not filename:
        return "<upload>"
    clean = "".join(c for c in filename if c.isprintable())
    return clean[:MAX_LABEL] or "<upload>"


class Service:
    """The app's state: the estimator, worker pools, batcher, admission and metrics."""

    def __init__(self, settings: ServeSettings, estimator: Estimator) -> None:
        self.settings = settings
        self.estimator = estimator
        # The detectors a request may name: those whose model file is here.
        self.detectors = [name for name in DETECTORS if detector_problem(name) is None]
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_pending,
            settings.request_timeout_s,
            settings.retry_after_s,
            self.metrics,
        )
        self.prepare_workers = max(1, settings.prepare_workers)
        self._make_workers()
        self.batched = 0  # requests handed to the batcher and not yet answered
        self.ready = False
        self.stopping = False
        self._derived: OrderedDict[Hashable, Estimator] = OrderedDict()
        self.sessions = Sessions(settings.max_sessions, settings.session_idle_s)

    # -- life ------------------------------------------------------------------------------
    def _make_workers(self) -> None:
        """The worker pools and the batcher (made again when a stopped app starts again:
        a second lifespan of one create_app() app, as a test fixture may run)."""
        settings = self.settings
        self.prepare_pool = ThreadPoolExecutor(
            self.prepare_workers, thread_name_prefix="agegender-prepare"
        )
        # One model worker: ONNX Runtime already uses every core inside one run.
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="agegender-model")
        self.batcher: Batcher[PreparedImage, list[Face]] = Batcher(
            # Looked up per batch, so a test can slow or stop this stage.
            lambda key, items: self.run_batch(key, items),
            self.model_pool,
            window_s=settings.batch_window_ms / 1000 if settings.batching else 0.0,
            max_batch=settings.max_batch if settings.batching else 1,
            on_batch=self.metrics.batch_size.observe,
            arriving=lambda: self.admission.in_flight - self.batched,
        )

    async def start(self) -> None:
        """Start batching, warm every worker's detector and models, then say ready."""
        if self.stopping:  # started again after a stop: its pools were shut down
            self._make_workers()
            self.stopping = False
        self.batcher.start()
        loop = asyncio.get_running_loop()
        # Each task waits for the others at a barrier, so each runs on its own thread.
        barrier = threading.Barrier(self.prepare_workers)

        def warm_one() -> None:
            try:
                self.estimator.warm()
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=120)

        await asyncio.gather(
            *(
                loop.run_in_executor(self.prepare_pool, warm_one)
                for _ in range(self.prepare_workers)
            ),
            loop.run_in_executor(self.model_pool, self.estimator.warm),
        )
        self.ready = True

    async def stop(self) -> None:
        """Stop taking work; requests still waiting get a 503 (not their own timeout)."""
        self.ready = False
        self.stopping = True
        await self.batcher.stop()
        self.prepare_pool.shutdown(wait=False, cancel_futures=True)
        self.model_pool.shutdown(wait=False, cancel_futures=True)

    # -- estimators for per-request options --------------------------------------------------
    def derived(self, options: EstimateOptions) -> Estimator:
        """The estimator for a request's options (kept for the next request that has them);
        it shares the loaded models, and finders with the same detector options."""
        overrides = options.overrides()
        if not overrides:
            return self.estimator
        try:
            config = self.estimator.config.with_overrides(**overrides)
        except AgegenderError as error:
            raise ApiError(400, "invalid_option", describe_error(error)) from None
        if config == self.estimator.config:
            return self.estimator
        key = (config.detector, config.min_face, config.tta, config.age_thresholds)
        found = self._derived.get(key)
        if found is None:
            found = self._derived[key] = self.estimator.derive(**overrides)
            while len(self._derived) > DERIVED_CACHE:
                self._derived.popitem(last=False)
        else:
            self._derived.move_to_end(key)
        return found

    # -- the stages (each runs in its worker pool) -------------------------------------------
    def prepare(self, estimator: Estimator, upload: Upload) -> PreparedImage:
        """Decode in memory (under the estimator's pixel limit), detect, crop."""
        label = label_of(upload.filename)
        rgb = images.decode_bytes(upload.data, pixel_limit=estimator.config.pixel_limit, name=label)
        return estimator.prepare(rgb, label)

    def run_batch(self, key: Hashable, prepared: list[PreparedImage]) -> list[list[Face]]:
        """One model pass over the crops of several requests that share `key`."""
        tta, thresholds = cast(tuple[bool, tuple[float, ...]], key)
        estimator = self.estimator
        if (tta, thresholds) != (estimator.config.tta, estimator.config.age_thresholds):
            estimator = estimator.derive(tta=tta, age_thresholds=thresholds)
        return estimator.estimate(prepared)

    # -- one request ---------------------------------------------------------------------
    async def estimate(self, upload: Upload, options: EstimateOptions) -> dict[str, Any]:
        """The JSON of `agegender predict --json` for one uploaded image."""
        estimator = self.derived(options)
        try:
            prepared = await self._in_pool(self.prepare_pool, self.prepare, estimator, upload)
        except ApiError:
            raise
        except Exception as error:  # a fault of this input: its answer, never a 500
            raise image_error(error, label_of(upload.filename)) from None
        key = (estimator.config.tta, estimator.config.age_thresholds)
        self.batched += 1
        try:
            faces = await self.batcher.submit(key, prepared)
        except ShuttingDown:
            raise shutting_down() from None
        finally:
            self.batched -= 1
        self.metrics.images.inc()
        self.metrics.faces.inc(len(faces))
        return ImageResult(prepared.name, faces, None, prepared.width, prepared.height).to_dict()

    # -- live sessions (frame by frame) ---------------------------------------------------
    def start_session(self, options: EstimateOptions, tracking: SessionOptions) -> LiveSession:
        """A new live session: a PeopleTracker over the estimator for `options`, set up
        as `agegender video` sets up its own (no thumbnails: nothing is written)."""
        estimator = self.derived(options)

        def make() -> PeopleTracker:
            return PeopleTracker(
                estimator,
                detect_every=tracking.detect_every,
                max_lost=tracking.max_lost,
                min_hits=tracking.min_hits,
                thumbnails=False,
            )

        session = self.sessions.create(make, tracking)
        self.metrics.live_sessions.set(len(self.sessions))
        return session

    async def track(self, session: LiveSession, upload: Upload) -> dict[str, Any]:
        """One frame of a session: decoded, tracked, each face with its track's fused
        estimate. The session's busy lock is held until the worker is done with the
        tracker (even if this request times out meanwhile), so frames never overlap."""
        if self.stopping:
            raise shutting_down()
        if session.ended:  # ended by a DELETE after this request found it
            raise ApiError(404, "session_not_found", f"session {session.id} has ended")
        if not session.busy.acquire(blocking=False):
            raise ApiError(
                409,
                "session_busy",
                f"session {session.id} is still processing its previous frame; send the "
                "next frame after that one's answer",
            )
        self.sessions.touch(session)

        def done(_: object) -> None:
            self.sessions.touch(session)
            session.busy.release()

        try:
            future = self.prepare_pool.submit(self._track_frame, session, upload)
        except RuntimeError:  # the pool is shut down
            session.busy.release()
            raise shutting_down() from None
        future.add_done_callback(done)
        try:
            report, ended, width, height = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopping and task is not None and not task.cancelling():
                raise shutting_down() from None
            raise
        self.metrics.live_frames.inc()
        self.metrics.images.inc()  # a frame is an image through detection and the models
        self.metrics.faces.inc(sum(1 for f in report.faces if f.detected))
        return {
            "session": session.id,
            **report.to_dict(),
            "width": width,
            "height": height,
            "ended": [p.to_dict() for p in ended],
        }

    def _track_frame(
        self, session: LiveSession, upload: Upload
    ) -> tuple[FrameReport, list[Person], int, int]:
        """In a prepare worker, under the session's busy lock: decode, then track. A frame
        that cannot be decoded is its own error and leaves the tracker as it was."""
        from ..streams import SourceFrame

        tracker = session.tracker
        label = label_of(upload.filename)
        try:
            rgb = images.decode_bytes(
                upload.data, pixel_limit=tracker.estimator.config.pixel_limit, name=label
            )
        except Exception as error:
            raise image_error(error, label) from None
        size = (int(rgb.shape[1]), int(rgb.shape[0]))
        if session.size is not None and size != session.size:
            # the tracks' boxes are in the first frames' pixels: carried into a frame of
            # another size they would lie outside it, and one face would become several
            raise ApiError(
                400,
                "frame_size_changed",
                f"{label}: {size[0]}x{size[1]}, but this session's frames are "
                f"{session.size[0]}x{session.size[1]}; send frames of one size, or open a "
                "new session for the new size",
            )
        session.size = size
        now = self.sessions.clock()
        frame = SourceFrame(session.frames, now - session.created, rgb, now)
        report, ended = tracker.process(frame)
        session.frames += 1
        session.add_people(ended)
        return report, ended, int(rgb.shape[1]), int(rgb.shape[0])

    async def end_session(self, key: str) -> dict[str, Any]:
        """End a session: the people still tracked are finished (after a frame in flight,
        whose worker holds the lock) and the summary lists everyone the session saw."""
        session = self.sessions.end(key)
        session.ended = True
        self.metrics.live_sessions.set(len(self.sessions))
        # Wait here for a frame in flight, never in a pool worker: that frame's own job may
        # be queued behind this one in the same pool (every worker would wait on a job
        # that cannot start, and every request on them, until the frame timed out).
        while not session.busy.acquire(blocking=False):
            await asyncio.sleep(BUSY_POLL_S)
        try:
            await self._in_pool(
                self.prepare_pool, lambda: session.add_people(session.tracker.finish())
            )
        finally:
            session.busy.release()
        return session.summary(self.sessions.clock())

    async def _in_pool(self, pool: Executor, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker pool; a pool shut down under the request is a 503."""
        if self.stopping:
            raise shutting_down()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopping and task is not None and not task.cancelling():
                raise shutting_down() from None  # the pool dropped the work, not the client
            raise
        except RuntimeError as error:
            if self.stopping and "shutdown" in str(error):
                raise shutting_down() from None
            raise

    # -- what is loaded ------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """The loaded cards by role (never a server path), and the names a request may
        send back: `detectors` for `?detector=`; the alignment is the server's own."""
        config = self.estimator.config
        heads = self.estimator.heads
        return {
            "preset": config.preset,
            "detector": config.detector,
            "detectors": self.detectors,
            "align": config.align,
            "detect_mirror": config.detect_mirror,
            "tta": config.tta,
            # cards that average with the mirror only for faces whose gender is unsure
            "tta_gated": list(config.tta_gated),
            "tta_margin": config.tta_margin,
            "batching": self.settings.batching,
            # The first head of each role (every built-in preset has one per role).
            "models": {role: card_info(task[0].card) for role, task in heads.items() if task},
            "heads": {
                role: [{"id": h.card.id, "weight": h.weight} for h in task]
                for role, task in heads.items()
            },
        }

    def model_ids(self) -> list[str]:
        return [h.card.id for task in self.estimator.heads.values() for h in task]


def image_error(error: Exception, label: str) -> ApiError:
    """The answer for an upload that cannot be decoded (or detected in): 413 over the
    pixel limit, 415 not an image format, 422 truncated or corrupt; never a 500."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, "image_too_large", str(error))
    if isinstance(error, UnsupportedImageError):
        return ApiError(415, "unsupported_image", str(error))
    if isinstance(error, AgegenderError):
        return ApiError(422, "invalid_image", describe_error(error))
    log.warning("upload %s could not be prepared", label, exc_info=error)
    return ApiError(422, "invalid_image", f"{label}: cannot be read ({describe_error(error)})")


def card_info(card: ModelCard) -> dict[str, Any]:
    """A card as the client may see it (the same data as `models list --json`, no paths)."""
    return card.to_dict(public=True)
