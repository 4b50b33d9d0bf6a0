"""`AlignmentPlotCallback`: the alignment picture of one fixed training example, every `alignment_plot_steps`.

`DWAKDTrainer` adds it when `alignment_plot_steps > 0` (otherwise nothing is registered and nothing runs). Each
picture costs one forward pass of each model on one example. It is written to
`output_dir/alignment/step-NNNNNN.png` (with its `.json`) and logged to TensorBoard and W&B when `report_to`
names them.
"""

import logging
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from ..optional import require_matplotlib
from .example import example_sides, response_tokens
from .figure import alignment_figure, save_alignment
from .numbers import alignment_numbers

logger = logging.getLogger(__name__)
IMAGE_TAG = "train/alignment"


class AlignmentPlotCallback(TrainerCallback):
    """Draw the first training example's alignment before training and every `trainer.args.alignment_plot_steps`
    optimizer steps. Every process runs the forward passes (sharded models need all of them); the main process
    writes and logs."""

    def __init__(self, trainer):
        require_matplotlib()
        self.trainer = trainer
        self.every = trainer.args.alignment_plot_steps
        self.batch = trainer.data_collator([trainer.train_dataset[0]])

    def on_train_begin(self, args, state, control, **kwargs):
        self.draw(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.draw(args, state)

    def draw(self, args, state):
        trainer = self.trainer
        student_model = trainer.accelerator.unwrap_model(trainer.model)
        student, teacher = example_sides(trainer.student_side, trainer.teacher_side, self.batch, student_model)
        numbers = alignment_numbers(
            student,
            teacher,
            trainer.projectors,
            args.loss_options(state.global_step),
            response_tokens(student, trainer.processing_class),
            response_tokens(teacher, trainer.teacher_processing_class),
            step=state.global_step,
        )
        if not state.is_world_process_zero:
            return
        figure = alignment_figure(numbers)
        path = Path(args.output_dir) / "alignment" / f"step-{state.global_step:06d}.png"
        png_path, _ = save_alignment(numbers, path, figure)
        self._log_to_trackers(args, state, figure, png_path)
        logger.info("step %d: alignment drawn to %s", state.global_step, png_path)

    def _log_to_trackers(self, args, state, figure, png_path):
        reporting = set(args.report_to or [])
        if "tensorboard" in reporting:
            for callback in self.trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_figure(IMAGE_TAG, figure, state.global_step, close=False)
        if "wandb" in reporting:
            import wandb

            if wandb.run is not None:
                wandb.log({IMAGE_TAG: wandb.Image(str(png_path)), "train/global_step": state.global_step})
