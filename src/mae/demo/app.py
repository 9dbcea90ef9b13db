"""The demo's page: Gradio components laid out, and each event wired to :class:`~mae.demo.session.DemoSession`.

Element ids (``elem_id``) name what a browser test or a user script looks for: ``upload``, ``example``,
``mask-ratio``, ``seed``, ``original``, ``masked``, ``reconstruction``, ``pasted``, ``info``, ``message``, and
on the second tab ``compare-path``, ``compare-button``, ``compare-masked``, ``first-reconstruction``,
``first-pasted``, ``second-reconstruction``, ``second-pasted``, ``comparison``.
"""

from __future__ import annotations

import math
from typing import Any

from mae.demo.session import EXAMPLE, UPLOAD, DemoSession, PageError, PageUpdate, Source
from mae.runs.optional import require

gr = require("gradio", "demo", "the demo (python -m mae.demo)")

VIEW_LABELS = {
    "original": "Original",
    "masked": "Masked input",
    "reconstruction": "Reconstruction",
    "pasted": "Reconstruction + visible patches",
}
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
"""Gradio's default look with local fonts only: the page loads nothing from the internet."""
RATIO_STEP = 0.05


def highest_ratio(num_patches: int) -> float:
    """The slider's end: the largest multiple of the step that leaves a patch visible (0.9 for 16 patches)."""
    steps = math.floor((1 - 1 / num_patches) / RATIO_STEP + 1e-9)
    return round(steps * RATIO_STEP, 2)


def picture(elem_id: str, label: str) -> gr.Image:
    return gr.Image(label=label, elem_id=elem_id, type="pil", format="png", interactive=False, buttons=["download"])


def loss_text(update: PageUpdate, norm_pix_loss: bool) -> str:
    views = update.views
    space = " (patches normalised by their own mean and variance: norm_pix_loss)" if norm_pix_loss else ""
    return (
        f"**Loss {views.loss:.4f}**: mean squared error over the {views.num_masked} removed patches of "
        f"{views.num_patches}{space}.  \nImage: {update.description}."
    )


def build_app(session: DemoSession, mask_ratio: float, seed: int, compare_path: str = "") -> gr.Blocks:
    """The page for ``session``, opening on its first example with the mask of (``mask_ratio``, ``seed``)."""
    primary = session.primary
    with gr.Blocks(title="MAE reconstructions", analytics_enabled=False) as app:
        gr.Markdown(
            f"# MAE reconstructions\nCheckpoint: `{primary.path}`  \n{primary.describe()} "
            f"(architecture from {primary.architecture_from})"
        )
        source = gr.State((EXAMPLE, 0))
        with gr.Row():
            upload = gr.File(label="Upload an image", file_count="single", type="filepath", elem_id="upload")
            example = gr.Dropdown(
                label="...or pick a test image",
                elem_id="example",
                value=0,
                choices=[(item.name, index) for index, item in enumerate(session.examples)],
            )
            with gr.Column():
                ratio = gr.Slider(
                    RATIO_STEP,
                    highest_ratio(primary.model.num_patches),
                    value=mask_ratio,
                    step=RATIO_STEP,
                    label="Mask ratio",
                    elem_id="mask-ratio",
                )
                seed_box = gr.Number(value=seed, precision=0, minimum=0, label="Mask seed", elem_id="seed")
        message = gr.Markdown(elem_id="message")
        with gr.Tabs():
            with gr.Tab("Reconstruction"):
                with gr.Row():
                    views = [picture(name, label) for name, label in VIEW_LABELS.items()]
                info = gr.Markdown(elem_id="info")
            with gr.Tab("Compare two checkpoints"):
                with gr.Row():
                    compare_box = gr.Textbox(
                        value=compare_path,
                        label="Second checkpoint (path on the server)",
                        elem_id="compare-path",
                        scale=4,
                    )
                    compare_button = gr.Button("Compare", elem_id="compare-button", scale=1)
                with gr.Row():
                    compared = [
                        picture("compare-masked", "Masked input (both)"),
                        picture("first-reconstruction", "First: reconstruction"),
                        picture("first-pasted", "First: + visible patches"),
                        picture("second-reconstruction", "Second: reconstruction"),
                        picture("second-pasted", "Second: + visible patches"),
                    ]
                comparison = gr.Markdown(elem_id="comparison")

        outputs = [source, *views, info, message, *compared, comparison]
        before_message = outputs.index(message)

        def only_message(text: str) -> list[Any]:
            """Leave every output as it is but the message."""
            return [gr.skip()] * before_message + [text] + [gr.skip()] * (len(outputs) - before_message - 1)

        def show(
            new_source: Source, mask: float, mask_seed: float | None, other: str, failure: str = "Cannot show this"
        ) -> list[Any]:
            try:
                update = session.update(
                    new_source, mask, 0 if mask_seed is None else int(mask_seed), (other or "").strip()
                )
            except PageError as error:  # the page keeps what it shows, the source state included
                return only_message(f"**{failure}:** {error}")
            first, second = update.views, update.compared
            return [
                new_source,
                *first.pictures(),
                loss_text(update, primary.model.norm_pix_loss),
                "",
                first.masked,
                first.reconstruction,
                first.pasted,
                second and second.reconstruction,
                second and second.pasted,
                update.comparison,
            ]

        def from_upload(path: str, mask: float, mask_seed: float | None, other: str) -> list[Any]:
            """The uploaded image's page, or the message why not; the upload box is emptied for the next file."""
            return [*show((UPLOAD, path), mask, mask_seed, other, failure="Cannot use this file"), None]

        settings = [ratio, seed_box, compare_box]
        upload.upload(from_upload, [upload, *settings], [*outputs, upload])
        example.input(lambda index, *rest: show((EXAMPLE, int(index)), *rest), [example, *settings], outputs)
        for control in (ratio, seed_box):
            control.change(show, [source, *settings], outputs, trigger_mode="always_last", show_progress="hidden")
        compare_button.click(show, [source, *settings], outputs)
        compare_box.submit(show, [source, *settings], outputs)
        app.load(show, [source, *settings], outputs)
    return app
