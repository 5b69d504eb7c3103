"""The grids of images that train.py logs each epoch and sample.py draws: (cells, 1, 28, 28) tensors
of pixel probabilities, laid out by torchvision.utils.save_image / make_grid with nrow=GRID_COLUMNS."""

import torch

GRID_COLUMNS = 8
PADDING = 2


@torch.no_grad()
def prior_grid(model, noise, digit=None):
    """Images decoded from the noise z (N, latent_dim), (N, 1, 28, 28).

    The VAE decodes each z; the CVAE with a digit decodes every z as that digit; the CVAE
    without one draws the layout of out_CVAE/: 10 rows of 8, row r digit r, the columns
    sharing the first 8 noise vectors.
    """
    if model.conditional and digit is None:
        z = noise[:GRID_COLUMNS].repeat(10, 1)
        y = torch.arange(10, device=noise.device).repeat_interleave(GRID_COLUMNS)
    elif model.conditional:
        z, y = noise, torch.full((len(noise),), digit, device=noise.device)
    else:
        z, y = noise, None
    return model.decode(z, y).view(-1, 1, 28, 28)


@torch.no_grad()
def reconstruction_grid(model, images, labels):
    """Inputs and their reconstructions from the latent means, in row pairs: 8 inputs, then their 8 reconstructions.

    A last row of fewer than 8 is padded with blank cells, so that each reconstruction sits below its input.
    """
    images = images.reshape(len(images), -1)
    y = labels if model.conditional else None
    mu, _ = model.encode(images, y)
    reconstructions = model.decode(mu, y)
    blank = images.new_zeros(-len(images) % GRID_COLUMNS, images.shape[1])
    images, reconstructions = torch.cat([images, blank]), torch.cat([reconstructions, blank])
    pairs = []
    for i in range(0, len(images), GRID_COLUMNS):
        pairs += [images[i : i + GRID_COLUMNS], reconstructions[i : i + GRID_COLUMNS]]
    return torch.cat(pairs).view(-1, 1, 28, 28)


@torch.no_grad()
def interpolation_row(model, first, second, labels, digit, steps):
    """One row: image first, `steps` images decoded from mean(first) to mean(second) inclusive, image second.

    Each image is encoded with its own label; the CVAE decodes the line with `digit`.
    """
    images = torch.stack([first, second])
    mu, _ = model.encode(images, labels if model.conditional else None)
    t = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)
    z = mu[0] + t * (mu[1] - mu[0])
    y = torch.full((steps,), digit, device=mu.device) if model.conditional else None
    return torch.cat([first.view(1, -1), model.decode(z, y), second.view(1, -1)]).view(-1, 1, 28, 28)


@torch.no_grad()
def traversal_grid(model, steps, span, digit, device):
    """For a 2-d latent, steps x steps images over [-span, span]^2: z1 grows to the right, z2 upwards.
    For a larger one, a row per dimension, swept over [-span, span] with the others at 0."""
    values = torch.linspace(-span, span, steps, device=device)
    if model.latent_dim == 2:
        z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")  # row 0 is the largest z2
        z = torch.stack([z1.flatten(), z2.flatten()], dim=1)
    else:
        z = torch.zeros(model.latent_dim, steps, model.latent_dim, device=device)
        for d in range(model.latent_dim):
            z[d, :, d] = values
        z = z.flatten(0, 1)
    y = torch.full((len(z),), digit, device=device) if model.conditional else None
    return model.decode(z, y).view(-1, 1, 28, 28)


@torch.no_grad()
def restyle_grid(model, images, labels):
    """A row per image: the image, then its latent mean decoded as each digit 0-9 (11 columns)."""
    mu, _ = model.encode(images, labels)
    z = mu.repeat_interleave(10, dim=0)
    y = torch.arange(10, device=mu.device).repeat(len(images))
    decoded = model.decode(z, y).view(len(images), 10, -1)
    return torch.cat([images.view(len(images), 1, -1), decoded], dim=1).view(-1, 1, 28, 28)
