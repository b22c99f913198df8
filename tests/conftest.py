import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Move every parameter off its init (zero heads, unit norms) so that a parity test can fail."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()
