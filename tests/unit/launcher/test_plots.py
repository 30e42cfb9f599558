"""The plots of a run, from its metrics.jsonl records (here written by hand in the logged shape)."""
import json

from launcher.plots import _moving, write_plots


def test_moving_mean_by_hand():
    assert _moving([2.0, 4.0, 6.0, 8.0], n=2) == [2.0, 3.0, 5.0, 7.0]


def _record(step: int, gvm: bool) -> dict:
    r = {"step": step, "reward_mean": 0.1 * step, "staleness_mean": 1.0, "staleness_max": 2,
         "staleness_hist": {"0": 2, "2": 2}, "gen_tokens_per_s": 3000.0, "trainer_tokens_per_s": 8000.0,
         "wait_batch_s": 0.01, "update_s": 0.25, "weight_sync_s": 0.006, "gen_tokens_total": 1000 * step,
         "train_elapsed_s": 0.3 * step, "groups_at_n_min": 1, "groups_at_n_max": 0,
         "group_size_hist": {"2": 1, "8": 2, "12": 1} if gvm else {"8": 4}}
    if step % 5 == 0:
        r.update(held_out_success=0.3 + 0.01 * step, held_out_sampled_success=0.2, **{"eval/set/pass@4": 0.5})
    return r


def test_every_plot_is_written_and_allocation_only_under_gvm(tmp_path):
    for gvm, run in ((False, tmp_path / "uniform"), (True, tmp_path / "gvm")):
        run.mkdir()
        rows = [{"step": 0, "held_out_success": 0.3, "version": 0}] + [_record(s, gvm) for s in range(1, 31)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        names = sorted(p.rsplit("/", 1)[1] for p in write_plots(str(run)))
        expected = ["held_out.png", "reward.png", "staleness.png", "throughput.png", "timing.png"]
        assert names == sorted(expected + (["allocation.png"] if gvm else []))
        assert all((run / "plots" / n).stat().st_size > 10_000 for n in names)  # drawn, not empty canvases


def test_a_run_that_trained_nothing_has_no_plots(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "held_out_success": 0.3}) + "\n")
    assert write_plots(str(tmp_path)) == []
