"""The strategies beyond cls/mean/max, with values worked out by hand."""

import torch

from bertflow.model.pooling import first_last_layers, pool

# two rows, three positions, hidden size 2; row 1 has one padding position
H = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[2.0, 0.0], [4.0, 8.0], [9.0, 9.0]]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_mean_sqrt_len_divides_the_sum_by_the_root_of_the_count():
    out = pool(H, MASK, "mean_sqrt_len")
    # row 0: (9, 12) / sqrt(3); row 1: (6, 8) / sqrt(2)
    torch.testing.assert_close(out, torch.tensor([[9 / 3**0.5, 12 / 3**0.5], [6 / 2**0.5, 8 / 2**0.5]]))


def test_last_token_takes_the_last_real_position_and_zeros_for_an_empty_row():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    h = torch.cat([H, H[:1]])
    torch.testing.assert_close(pool(h, mask, "last_token"), torch.tensor([[5.0, 6.0], [4.0, 8.0], [0.0, 0.0]]))


def test_first_last_avg_means_the_first_and_last_transformer_layers():
    embeddings, first, middle, last = (torch.full((1, 2, 1), v) for v in (100.0, 2.0, 50.0, 4.0))
    h = first_last_layers([embeddings, first, middle, last])  # the embedding layer is not used
    torch.testing.assert_close(pool(h, torch.tensor([[1, 1]]), "first_last_avg"), torch.tensor([[3.0]]))
