"""What a reader needs of a figure, checked on the matplotlib objects before they are saved."""

import matplotlib.pyplot as plt


def figure_problems(fig: plt.Figure) -> list[str]:
    """What a figure lacks: axes with data but no x or y label, images without a labelled colour bar."""
    problems = []
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    bar_labels = [ax.get_ylabel() or ax.get_xlabel() for ax in colorbars]
    for i, ax in enumerate(a for a in fig.axes if a.get_label() != "<colorbar>"):
        if not (ax.lines or ax.collections or ax.images or ax.patches):
            continue
        name = ax.get_title() or f"axes {i}"
        if not ax.get_xlabel():
            problems.append(f"{name}: no x label")
        if not ax.get_ylabel():
            problems.append(f"{name}: no y label")
        if not (ax.get_title() or fig._suptitle):
            problems.append(f"axes {i}: no title")
    if any(ax.images for ax in fig.axes) and not any(bar_labels):
        problems.append("an image without a labelled colour bar")
    return problems
