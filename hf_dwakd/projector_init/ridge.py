"""Ridge least squares from accumulated normal equations, in float64, with an unpenalised intercept."""

import torch
import torch.distributed as dist


class RidgeNormalEquations:
    """Running sums of a regression `targets ~ inputs @ W + b` over rows added in any number of calls.

    Only the sums are kept (count, sum x, sum y, x^T x, x^T y), never the rows, so the memory does not grow with
    the sample; `all_reduce` adds the sums of every process, which gives the same solution as one process that saw
    every row.
    """

    def __init__(self, input_size: int, output_size: int, device):
        options = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros((), **options)
        self.input_sum = torch.zeros(input_size, **options)
        self.target_sum = torch.zeros(output_size, **options)
        self.gram = torch.zeros(input_size, input_size, **options)
        self.cross = torch.zeros(input_size, output_size, **options)

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Rows `inputs` (N, input_size) and `targets` (N, output_size)."""
        inputs, targets = inputs.to(self.gram), targets.to(self.gram)
        self.count += inputs.shape[0]
        self.input_sum += inputs.sum(dim=0)
        self.target_sum += targets.sum(dim=0)
        self.gram += inputs.T @ inputs
        self.cross += inputs.T @ targets

    def all_reduce(self) -> None:
        for total in (self.count, self.input_sum, self.target_sum, self.gram, self.cross):
            all_reduced(total)

    def solve(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`(W, b)`, W (input_size, output_size), minimising sum |y - x W - b|^2 + lam |W|^2 over the rows added.

        On centred sums: W = (Cxx + lam I)^-1 Cxy, b = mean y - mean x W. `lam = ridge * trace(Cxx) / input_size`,
        the ridge relative to the inputs' mean variance times the row count, so one value suits any hidden size,
        scale and sample size.
        """
        count = float(self.count)
        if count < 1:
            raise ValueError("no rows to fit")
        input_mean, target_mean = self.input_sum / count, self.target_sum / count
        centred_gram = self.gram - count * torch.outer(input_mean, input_mean)
        centred_cross = self.cross - count * torch.outer(input_mean, target_mean)
        size = centred_gram.shape[0]
        lam = ridge * centred_gram.diagonal().sum().clamp(min=1e-12) / size
        system = centred_gram + lam * torch.eye(size, dtype=centred_gram.dtype, device=centred_gram.device)
        weight = torch.linalg.solve(system, centred_cross)
        return weight, target_mean - input_mean @ weight


def all_reduced(total: torch.Tensor) -> torch.Tensor:
    """`total` summed over the processes of torch.distributed, in place (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return total
