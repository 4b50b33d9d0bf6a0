"""The trainable projectors between the student and teacher spaces (docs/method.md, Cross-model attention)."""

from torch import nn

PROJECTORS_NAME = "projectors.safetensors"  # beside a student trained with one teacher


def projectors_file_name(teacher_name: str) -> str:
    """The file of one teacher's projectors beside a student trained with several teachers."""
    return f"projectors-{teacher_name}.safetensors"

# The config fields of every method that trains the projectors: their learning rate and their start.
PROJECTOR_FIELDS = ("projector_learning_rate", "projector_init", "projector_init_rows", "projector_init_ridge")


class DWAKDProjectors(nn.Module):
    """`query` (2d_s -> 2d_t), `t2s` (d_t -> d_s), `s2t` (d_s -> d_t), `embed_t2s` (d_t -> d_s).

    `query`, `t2s` and `s2t` serve the cross-model attention; `t2s` also maps teacher hidden states for the
    Soft-DTW hidden term, and `embed_t2s` maps teacher target embeddings for the Soft-DTW embedding term.
    `embedding_projector=False` leaves `embed_t2s` out (None) where no embedding term is trained (DSKD, or that
    DWA-KD ablation), so DDP never waits for gradients of an unused layer.
    """

    def __init__(self, student_hidden_size: int, teacher_hidden_size: int, embedding_projector: bool = True):
        super().__init__()
        sizes = (("student_hidden_size", student_hidden_size), ("teacher_hidden_size", teacher_hidden_size))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int (the model's hidden size), got {value!r}.")
        self.student_hidden_size = student_hidden_size
        self.teacher_hidden_size = teacher_hidden_size
        self.query = nn.Linear(2 * student_hidden_size, 2 * teacher_hidden_size)
        self.t2s = nn.Linear(teacher_hidden_size, student_hidden_size)
        self.s2t = nn.Linear(student_hidden_size, teacher_hidden_size)
        self.embed_t2s = nn.Linear(teacher_hidden_size, student_hidden_size) if embedding_projector else None

    def extra_repr(self) -> str:
        return f"student_hidden_size={self.student_hidden_size}, teacher_hidden_size={self.teacher_hidden_size}"
