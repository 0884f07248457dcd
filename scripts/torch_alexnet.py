"""scripts/torch_alexnet.py: the paper's AlexNet in PyTorch, the one reference
model the Python scripts share (fixtures, benchmarks).

Krizhevsky et al., NIPS 2012, section 3.5, on one device (the two towers are
groups=2): conv1 11x11/4 -> ReLU -> LRN -> max pool 3/2; conv2 5x5 pad 2
groups 2 -> ReLU -> LRN -> pool; conv3 3x3 pad 1 (both towers); conv4, conv5
3x3 pad 1 groups 2; pool after conv5; flatten (C, H, W) into fc6; fc6, fc7
with ReLU and dropout; fc8 logits. Widths are a parameter, so narrow versions
keep every structural choice.

LRN: the paper's b = a / (k + alpha * sum_5 a^2)^beta with alpha = 1e-4.
PyTorch's nn.LocalResponseNorm divides alpha by size, so it gets 5 * 1e-4.
With two towers each normalises its own half of the channels (the paper's
GPUs exchange maps only at conv3 and the fc layers), so the window stops at
the tower's edge: LRN runs on the maps viewed as (n * towers, c / towers, h, w).

The conv geometry, groups, input crop and LRN are parameters too, so the
other configs of src/model/topology.rs (alexnet-half, cifar) can be built
here as an independent reference; `config(name)` gives their arguments. The
defaults are the paper's net, built exactly as before (same modules in the
same order, so seeded initialisation and the fixtures do not change).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_WIDTHS = [96, 256, 384, 384, 256, 4096, 4096]
# (kernel, stride, padding) of conv1..conv5 (section 3.5) and their groups
# (the two towers: conv2, conv4, conv5 see only their own tower's maps).
PAPER_CONVS = [(11, 4, 0), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
PAPER_GROUPS = [1, 2, 1, 2, 2]
PAPER_CROP = 227
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def make_lrn():
    """The paper's LRN in PyTorch's terms (alpha * size)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(nn.Module):
    """widths: conv1..conv5, fc6, fc7 outputs; dropout: fc6/fc7 probability (0 = off);
    convs: (kernel, stride, padding) per conv layer; groups: per conv layer;
    crop: input height and width; lrn: False for the no-LRN ablation;
    towers: 2 (the paper's net: LRN within each tower's channels) or 1."""

    def __init__(self, widths=PAPER_WIDTHS, classes=1000, dropout=0.5,
                 convs=PAPER_CONVS, groups=PAPER_GROUPS, crop=PAPER_CROP, lrn=True, towers=2):
        super().__init__()
        self.towers = towers
        w = widths
        c_in = [3] + list(w[:4])
        # Side of the map after each conv and after each pool (floor, no padding).
        side = crop
        for i, (k, s, p) in enumerate(convs):
            side = (side + 2 * p - k) // s + 1
            if i in (0, 1, 4):
                side = (side - 3) // 2 + 1
        for i, (k, s, p) in enumerate(convs):
            conv = nn.Conv2d(c_in[i], w[i], k, stride=s, padding=p, groups=groups[i])
            setattr(self, f"conv{i + 1}", conv)
        self.fc6 = nn.Linear(w[4] * side * side, w[5])  # 256 * 6 * 6 for the paper
        self.fc7 = nn.Linear(w[5], w[6])
        self.fc8 = nn.Linear(w[6], classes)
        self.lrn = make_lrn() if lrn else nn.Identity()
        self.pool = nn.MaxPool2d(3, stride=2)  # overlapping (section 3.4)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def tower_lrn(self, x):
        """LRN over each tower's channels."""
        n, c, h, w = x.shape
        t = self.towers
        return self.lrn(x.reshape(n * t, c // t, h, w)).reshape(n, c, h, w)

    def forward(self, x):
        x = self.pool(self.tower_lrn(F.relu(self.conv1(x))))  # paper: 227 -> 55 -> 27
        x = self.pool(self.tower_lrn(F.relu(self.conv2(x))))  # paper: 27 -> 13
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))  # paper: 13 -> 6
        x = torch.flatten(x, 1)  # (C, H, W) order, as the Rust net flattens
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)


def config(name):
    """AlexNet(**config(name)) is the named config of src/model/topology.rs,
    restated here on purpose: an independent reference for the exports."""
    if name == "alexnet":
        return dict(widths=PAPER_WIDTHS, classes=1000)
    if name == "alexnet-half":
        # Section 6.1's one-GPU net: half the kernels in conv1-conv4, no towers.
        return dict(widths=[48, 128, 192, 192, 256, 4096, 4096], classes=1000,
                    groups=[1, 1, 1, 1, 1], towers=1)
    if name == "cifar":
        # 28x28 crops of 32x32 images, 5x5 convs at stride 1 for conv1/conv2.
        return dict(widths=[64, 128, 192, 192, 128, 512, 512], classes=10,
                    convs=[(5, 1, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)], crop=28)
    raise ValueError(f"unknown config {name!r}; choose alexnet, alexnet-half or cifar")
