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
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_WIDTHS = [96, 256, 384, 384, 256, 4096, 4096]
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def make_lrn():
    """The paper's LRN in PyTorch's terms (alpha * size)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(nn.Module):
    """widths: conv1..conv5, fc6, fc7 outputs; dropout: fc6/fc7 probability (0 = off)."""

    def __init__(self, widths=PAPER_WIDTHS, classes=1000, dropout=0.5):
        super().__init__()
        w = widths
        self.conv1 = nn.Conv2d(3, w[0], 11, stride=4)
        self.conv2 = nn.Conv2d(w[0], w[1], 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(w[1], w[2], 3, padding=1)
        self.conv4 = nn.Conv2d(w[2], w[3], 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(w[3], w[4], 3, padding=1, groups=2)
        self.fc6 = nn.Linear(w[4] * 6 * 6, w[5])
        self.fc7 = nn.Linear(w[5], w[6])
        self.fc8 = nn.Linear(w[6], classes)
        self.lrn = make_lrn()
        self.pool = nn.MaxPool2d(3, stride=2)  # overlapping (section 3.4)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = self.pool(self.lrn(F.relu(self.conv1(x))))  # 227 -> 55 -> 27
        x = self.pool(self.lrn(F.relu(self.conv2(x))))  # 27 -> 13
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))  # 13 -> 6
        x = torch.flatten(x, 1)  # (C, H, W) order, as the Rust net flattens
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)
