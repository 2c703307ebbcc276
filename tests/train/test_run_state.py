"""RunState: one stateful object (DCP's ``Stateful`` protocol) for everything a checkpoint holds."""

import argparse
import io

import torch
from torch.distributed.checkpoint.stateful import Stateful

from open_clip_train.run_state import RunState


def _args() -> argparse.Namespace:
    return argparse.Namespace(distributed=False, rank=0, world_size=1, device="cpu", max_nonfinite_steps=10)


def _state(seed: int) -> RunState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return RunState(model=model, optimizer=optimizer, scaler=None, name="run", args=_args())


def _through_a_file(ckpt: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _train(state: RunState, steps: int) -> None:
    for _ in range(steps):
        state.optimizer.zero_grad()
        state.model(torch.randn(3, 4)).square().mean().backward()
        state.optimizer.step()
        state.progress.global_step += 1


def test_is_a_dcp_stateful():
    assert isinstance(_state(0), Stateful)


def test_state_dict_round_trip_restores_model_optimizer_progress_and_rng():
    saved = _state(0)
    _train(saved, 3)
    ckpt = _through_a_file(saved.state_dict(epoch=2, batch_in_epoch=0))
    assert ckpt["epoch"] == 2 and ckpt["name"] == "run" and ckpt["global_step"] == 3
    after_save = torch.rand(5)  # what the RNG draws next, from the saved state

    restored = _state(1)  # other weights, fresh optimizer, progress at zero
    restored.load_state_dict(ckpt)
    assert (restored.epoch, restored.batch_in_epoch, restored.progress.global_step) == (2, 0, 3)
    for a, b in zip(saved.model.state_dict().values(), restored.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(5), after_save)  # an epoch-boundary checkpoint restores the RNG
    # identical optimizer state: one more identical step gives identical weights
    torch.manual_seed(7)
    _train(saved, 1)
    torch.manual_seed(7)
    _train(restored, 1)
    for a, b in zip(saved.model.parameters(), restored.model.parameters()):
        assert torch.equal(a, b)


def test_state_dict_without_arguments_records_the_last_position():
    state = _state(0)
    state.state_dict(epoch=1, batch_in_epoch=0)
    assert state.state_dict()["epoch"] == 1


def test_loads_a_33_style_checkpoint():
    source = _state(0)
    _train(source, 2)
    ckpt = {"epoch": 4, "name": "old", "state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()},
            "optimizer": source.optimizer.state_dict()}
    target = _state(1)
    target.load_state_dict(_through_a_file(ckpt))
    assert target.epoch == 4 and target.progress.global_step == 0
    for a, b in zip(source.model.state_dict().values(), target.model.state_dict().values()):
        assert torch.equal(a, b)
    assert target.optimizer.state_dict()["state"][0]["step"] == 2
