"""FSDP2 (`fully_shard`): how the frozen teacher is sharded, and the parameters the losses read outside a forward.

Under FSDP2 a module's parameters are shards (DTensors) except between the all-gather before its forward and the
reshard after it. The losses apply some of them to hidden rows after the forward: the projectors registered in the
student, the teacher's output layer. accelerate puts the student's output layer in a unit that stays gathered until
its backward; the projectors and the teacher's output layer sit in their model's root unit, which `gathered_roots`
keeps gathered for the step.
"""

import contextlib

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from trl.models import prepare_fsdp


def shard_teacher(teacher, accelerator):
    """Shard every decoder layer of a teacher that only runs forwards, then its root (TRL's `prepare_fsdp`).

    The layers take the plugin's mixed precision and offloading, and always reshard after their forward: with no
    backward to free them, a layer that kept its gathered weights would hold them for good.
    """
    plugin = accelerator.state.fsdp_plugin
    layer_options = dict(
        reshard_after_forward=True,
        mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        offload_policy=plugin.cpu_offload,
    )
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        layer_options["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    layer_classes = set(teacher._no_split_modules or [])
    for module in teacher.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, **layer_options)
    return prepare_fsdp(teacher, accelerator)


@contextlib.contextmanager
def gathered_roots(*models):
    """Keep each FSDP2 root's own parameters gathered from its forward to the end of the step, then reshard them.

    The student's root would be resharded by its backward anyway; the teacher's has no backward.
    """
    roots = [model for model in models if isinstance(model, FSDPModule)]
    for root in roots:
        root.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for root in roots:
            root.reshard()


def load_full_state(module, state):
    """`module.load_state_dict(state)` from whole tensors, also where FSDP2 holds the parameters as shards."""
    own = module.state_dict()
    with torch.no_grad():
        state = {
            name: distribute_tensor(value, own[name].device_mesh, own[name].placements)
            if isinstance(own.get(name), DTensor)
            else value
            for name, value in state.items()
        }
    module.load_state_dict(state)
