"""``lmtune select``'s figure goes to the output folder, never next to the curves file it read."""

import matplotlib.colors
import matplotlib.text
import numpy as np

from lmtune.selection.select import choose_model

SIZES = [0] + [200 * 2 ** k for k in range(8)]


def test_the_figure_is_written_to_the_output_folder_by_default(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    rows = [[3.0 * (1 + d) ** -(0.2 + 0.05 * m) + 0.5 for d in SIZES] for m in range(4)]
    (data / "curves.csv").write_text("config name," + ",".join(map(str, SIZES)) + ",size\n" + "".join(
        f"m{m}," + ",".join(f"{v:.6f}" for v in row) + f",{10 ** 6 * (m + 1)}\n" for m, row in enumerate(rows)))
    monkeypatch.chdir(work)
    result = choose_model(curves=data / "curves.csv", budget_ratio=4)
    assert result.plot_path == work.joinpath("lmtune-out", "select", "curves-select.png").relative_to(work)
    assert (work / result.plot_path).stat().st_size > 10_000
    assert list(data.iterdir()) == [data / "curves.csv"]  # nothing written into the data folder
    assert result.ranking[0] == "m3" and np.isfinite(result.selection.budget)  # steepest curve predicted best


def test_panels_follow_the_ranking_the_chosen_model_is_marked_and_everything_is_labelled():
    from lmtune.selection.curves import Curves
    from lmtune.selection.plot import CHOSEN, curves_figure

    losses = np.array([[3.0 * (1 + d) ** -(0.2 + 0.05 * m) + 0.5 for d in SIZES] for m in range(4)])
    curves = Curves(names=[f"m{m}" for m in range(4)], sizes=np.array(SIZES, dtype=float), losses=losses,
                    params=np.array([1e6, 2e6, 3e6, 4e6]))
    fig = curves_figure(curves, 25_600, 1_600, ranking=[2, 0, 3, 1], scores=[0.9, 0.8, 0.7, 0.6])
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["#1 m2", "#2 m0", "#3 m3", "#4 m1"]
    framed = [ax.get_title().split("\n")[0] for ax in panels
              if all(spine.get_edgecolor()[:3] == matplotlib.colors.to_rgb(CHOSEN) for spine in ax.spines.values())]
    assert framed == ["#1 m2"]  # only the chosen model
    assert len(fig.legends) == 1  # one legend for every panel
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "budget: 1,600 examples" in labels and "target: 25,600 examples" in labels
    assert "chosen by ats-guard" in labels and "AtS line" in labels
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert "training examples (log scale)" in texts and "loss (log scale)" in texts  # the axes say what they show
