"""Error CDF plot: a logarithmic axis when refined (mm) and coarse (m) errors share a plot."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from posenet_ros.evaluation import plots


@pytest.fixture
def captured(monkeypatch):
    """The figure plot_error_cdf saves (its PNG is written too)."""
    figs = []
    save = plots._save
    monkeypatch.setattr(plots, '_save', lambda fig, path: figs.append(fig) or save(fig, path))
    return figs


def test_log_axis_only_when_errors_span_orders_of_magnitude(tmp_path, captured):
    rng = np.random.default_rng(0)
    coarse = (rng.uniform(0.1, 2.0, 50), rng.uniform(1.0, 20.0, 50))
    refined = (rng.uniform(0.001, 0.02, 50), np.r_[rng.uniform(0.01, 0.3, 45), [np.inf] * 5])
    similar = (rng.uniform(0.2, 3.0, 50), rng.uniform(2.0, 30.0, 50))
    path = plots.plot_error_cdf({'posenet': coarse, 'refined': refined}, tmp_path / 'a.png')
    assert path.stat().st_size > 0
    axes = captured[-1].axes
    assert [ax.get_xscale() for ax in axes] == ['log', 'log']
    assert 'log scale' in axes[0].get_xlabel()
    assert any('(5 failed)' in t.get_text() for t in axes[1].get_legend().get_texts())
    plots.plot_error_cdf({'posenet': coarse, 'nearest': similar}, tmp_path / 'b.png')
    assert [ax.get_xscale() for ax in captured[-1].axes] == ['linear', 'linear']
    plt.close('all')
