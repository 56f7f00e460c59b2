"""compare's console: one line per stage with elapsed time and an ETA; the known library noise is silenced."""

from __future__ import annotations

import logging
import warnings

from collab_llm.console import StageClock, duration, quiet_known_noise


def test_stage_lines_carry_elapsed_time_and_an_eta_by_kind():
    now = [0.0]
    lines: list[str] = []
    clock = StageClock(["sasrec", "tallrec", "llara", "ilora"], lines.append, clock=lambda: now[0],
                       kind=lambda m: "CF" if m == "sasrec" else "LLM")
    clock.started("sasrec")
    now[0] = 5.0
    clock.finished("sasrec")
    clock.started("tallrec")
    now[0] = 125.0
    clock.finished("tallrec")
    clock.skipped("llara", "already finished, skipped")
    assert lines[0] == "[compare] 1/4 sasrec: started (elapsed 0s; ETA unknown for 4 methods left until one CF/LLM method is timed)"
    # only the CF model ran: its 5 s say nothing about an LLM method's minutes
    assert lines[1] == "[compare] 1/4 sasrec: finished in 5s (elapsed 5s; ETA unknown for 3 methods left until one LLM method is timed)"
    # LLM methods are expected to take what the LLM method took, not the CF model's seconds
    assert lines[3] == "[compare] 2/4 tallrec: finished in 2m00s (elapsed 2m05s; ETA 4m00s for 2 methods left)"
    assert lines[4] == "[compare] 3/4 llara: already finished, skipped (elapsed 2m05s; ETA 2m00s for 1 method left)"
    assert duration(3700) == "1h01m" and duration(59.4) == "59s"


def test_known_noise_is_silenced_and_other_warnings_are_kept(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else", FutureWarning)
        warnings.warn("Found 30 module(s) in eval mode at the start of training. This may ...", UserWarning)
        warnings.warn("something a user should see", UserWarning)
    assert [str(w.message) for w in seen] == ["something a user should see"]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x)")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
