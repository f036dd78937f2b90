"""Pictures to look at rather than to compute with: a distilled set's synthetic images with their captions as one
grid, its learned image–text similarity matrix as a heat map, students' recall curves, and recall against budget.
All are PNGs written atomically, so a crash never leaves a half-drawn file where a finished one is expected."""
from itertools import cycle

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from common.io import atomic_path

CAPTION_LINES = 3  # lines of caption under each tile; longer captions end in an ellipsis
FONT_SIZE = 10


def to_uint8(images, mean, std):
    """(N,3,H,W) normalised floats -> (N,H,W,3) uint8 pixels; values outside the image range are clamped."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N,3,H,W), got {tuple(images.shape)}")
    x = images.detach().cpu().double()
    mean = torch.as_tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    pixels = ((x * std + mean) * 255).clamp(0, 255).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _wrap(text, font, width, max_lines=CAPTION_LINES):
    """Greedy word wrap to `width` pixels; words longer than a line are cut; extra lines become '…'."""
    ellipsis = "…" if isinstance(font, ImageFont.FreeTypeFont) else "..."  # bitmap font: latin-1 only
    fits = lambda s: font.getlength(s) <= width  # noqa: E731
    lines, line = [], ""
    for word in str(text).split():
        while not fits(word):  # break an overlong word after the last character that fits
            cut = 1
            while fits(word[:cut + 1]):
                cut += 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}" if line else word
        if fits(candidate):
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not fits(last + ellipsis):
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + ellipsis]
    return lines


def save_grid(path, images_uint8, captions, columns=10, tile=96):
    """One PNG: each image resized to tile×tile, its caption in small text below, on white."""
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N,H,W,3), got {images.dtype} {images.shape}")
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise ValueError("no images to draw")
    font, pad = _font(), 4
    line_h = font.getbbox("Ag")[3] + 2
    cell_w, cell_h = tile + 2 * pad, tile + 2 * pad + CAPTION_LINES * line_h
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (pixels, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + pad, (i // columns) * cell_h + pad
        img = Image.fromarray(pixels)
        # nearest keeps a small synthetic image's pixels crisp; bilinear avoids aliasing when shrinking
        upscale = img.width <= tile and img.height <= tile
        sheet.paste(img.resize((tile, tile), Image.NEAREST if upscale else Image.BILINEAR), (x, y))
        for k, line in enumerate(_wrap(caption, font, tile)):
            draw.text((x, y + tile + 2 + k * line_h), line, fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def save_heatmap(path, matrix, title):
    """PNG heat map of a 2-D matrix (rows = images, columns = texts), colour scale from its own min to max."""
    m = matrix.detach().cpu().double().numpy() if torch.is_tensor(matrix) else np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {m.shape}")
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # sequential map: the matrix starts at the identity, so 0 is not a meaningful centre;
    # antialiased: at N ~ 1000 cells are smaller than pixels, and nearest sampling would drop some
    im = ax.imshow(m, cmap="viridis", vmin=np.nanmin(m), vmax=np.nanmax(m),
                   aspect="auto", interpolation="antialiased")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("text")
    ax.set_ylabel("image")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def save_curves(path, series, title):
    """PNG of mean recall against student epochs: `series` = [(label, epochs, {split: [recall per epoch]})];
    test solid, val dashed, one colour per label."""
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (label, epochs, by_split) in enumerate(series):
        for split, style in (("test", "-"), ("val", "--")):
            if split in by_split:
                ax.plot(epochs, by_split[split], style, color=f"C{k % 10}", marker=".",
                        label=f"{label} ({split})")
    ax.set_xlabel("student epoch")
    ax.set_ylabel("mean recall (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


CONTROL_LABEL = "starting point (iteration 0, the better control) → distilled set: the gain"
LINE_LOOKS = (("o", "-"), ("^", "--"), ("D", "-."))  # (marker, dash) of lines 1-10, 11-20, 21-30
OFFSET_STEP = 1.035  # neighbouring lines at one budget sit this factor apart on the log budget axis


def _offsets(labels):
    """{label: factor on the budget}: the lines spread symmetrically around each budget."""
    centre = (len(labels) - 1) / 2
    return {label: OFFSET_STEP ** (i - centre) for i, label in enumerate(labels)}


def save_budget_plot(path, panels, columns, title):
    """PNG of mean recall against budget (log x, the budgets as ticks), `panels` laid out `columns` to a row, one
    legend on the right; returns the Figure. A panel is (title, lines, published, full, controls):
    lines: [(label, budgets, means, stds)]: line, markers and error bars; a label keeps its colour in every panel,
    and past ten labels the colours come round with another marker and dash (LINE_LOOKS);
    the lines of a panel sit side by side around each budget (`_offsets`), so that none hides another;
    published: [(label, line label, budgets, means)]: hollow markers in that line's colour;
    full: [(label, mean, std)]: horizontal line with a ± std band; std None: a dotted line (a published number);
    controls: [(line label, budget, mean)]: the line's own starting point at that budget, a hollow square with an
    arrow up (or down) to the distilled set's mean, its gain written beside it."""
    colours = {}
    for _, lines, *_ in panels:
        for label, *_ in lines:
            colours.setdefault(label, f"C{len(colours) % 10}")
    # past ten lines the colours come round again: marker and dash tell them apart
    looks = {label: LINE_LOOKS[(i // 10) % len(LINE_LOOKS)] for i, label in enumerate(colours)}
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(5 * columns + 2.5, 5 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    handles = {}  # one legend entry per label, although a line appears in several panels
    for k, (panel_title, lines, published, full, controls) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, k + 1)
        offset = _offsets([label for label, *_ in lines])
        reached = {}
        for label, budgets, means, stds in lines:
            xs = [b * offset[label] for b in budgets]
            reached.update({(label, b): (x, m) for b, x, m in zip(budgets, xs, means)})
            marker, linestyle = looks[label]
            handles.setdefault(label, ax.errorbar(xs, means, yerr=stds, color=colours[label], marker=marker,
                                                  linestyle=linestyle, capsize=3, label=label))
        for label, line, budgets, means in published:
            handles.setdefault(label, ax.plot([b * offset[line] for b in budgets], means, linestyle="none",
                                              marker="o", markersize=9, markerfacecolor="none",
                                              markeredgecolor=colours[line], label=label)[0])
        for line, budget, start in controls:
            x, mean = reached[line, budget]
            marker = ax.plot([x], [start], linestyle="none", marker="s", markersize=6, markerfacecolor="none",
                             markeredgecolor=colours[line], label=CONTROL_LABEL)[0]
            handles.setdefault(CONTROL_LABEL, marker)
            ax.annotate("", xy=(x, mean), xytext=(x, start),
                        arrowprops={"arrowstyle": "->", "color": colours[line], "linewidth": 1.2})
            ax.annotate(f"{mean - start:+.1f}", xy=(x, (mean + start) / 2), xytext=(3, 0), textcoords="offset points",
                        fontsize=7, color=colours[line], va="center")
        styles = cycle(("-", "--", "-."))  # several full-data runs (e.g. full towers, heads only) told apart
        for label, mean, std in full:
            handles.setdefault(label, ax.axhline(mean, color="black", linestyle=":" if std is None else next(styles),
                                                 linewidth=1, label=label))
            if std is not None:
                ax.axhspan(mean - std, mean + std, color="black", alpha=0.1, linewidth=0)
        ax.set_xscale("log")
        budgets = sorted({b for _, bs, _, _ in lines for b in bs})
        ax.set_xticks(budgets, labels=[str(b) for b in budgets])
        ax.minorticks_off()  # log minor ticks would label budgets nobody ran
        ax.set_ylim(bottom=0)
        ax.set_xlabel("budget (pairs in the distilled set)")
        ax.set_ylabel("mean recall (TR/IR@1/5/10)")
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize=8)  # clear of the title
    fig.suptitle(title)
    _save(fig, path)
    return fig
