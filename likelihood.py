"""-log p(x) of a trained model: the IWAE bound, and for 2-d latents the exact value by integration.

iwae_bounds gives, per image, the -ELBO and the importance-weighted bound of Burda et al. from the same
k samples of q(z|x). exact_nll integrates p(x|z) N(z; 0, I) over the latent plane: rings of tiles out
from the origin, then a quadtree refinement where the mass is; model_exact_nll applies it to a model's
Bernoulli decoder. evaluate.py prints both; latent_dist.py draws the exact posterior p(z|x) they imply.
"""

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import encode_means

ROWS = 2**22  # at most this many numbers in a working tensor (16 MB of float32): IWAE and integration chunks
MAX_RADIUS = 40.0  # exact_nll integrates |z| < 40; the prior puts exp(-800) beyond


# --- the bounds ----------------------------------------------------------------------------------


def softplus(logits):
    """log(1 + exp(logits)) as relu(l) - log(sigmoid(|l|)): relu carries the large part, so it stays accurate
    where the sigmoid saturates, and unlike F.softplus and log1p it is vectorised on CPUs (several times faster)."""
    return torch.relu(logits) - torch.log(torch.sigmoid(logits.abs()))


def log_bernoulli(logits, x):
    """log p(x|z) = sum_i x_i l_i - softplus(l_i): the negative BCE, summed over the pixels."""
    return (logits * x).sum(-1) - softplus(logits).sum(-1)


@torch.inference_mode()
def iwae_bounds(model, images, labels, k, generator, desc=None):
    """Per image, (-ELBO, IWAE bound) on -log p(x) from the same k samples z ~ q(z|x).

    With log weights w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x): the mean of -w_j and
    -log (1/k) sum_j exp(w_j). Images and samples go in chunks of at most ROWS / 784 decodes.
    desc: the label of a progress bar on stderr (none without it).
    """
    per_chunk = max(1, ROWS // 784)
    images_at_once = max(1, per_chunk // k)
    # filled in place: a list of small tensors, one per chunk, fragments the heap until it holds gigabytes
    elbo = torch.empty(len(images), device=images.device, dtype=torch.float64)
    iwae = torch.empty(len(images), device=images.device, dtype=torch.float64)
    chunks = tqdm(
        range(0, len(images), images_at_once), desc=desc, leave=False, disable=True if desc is None else None
    )  # None: shown on a terminal only
    for i in chunks:
        x = images[i : i + images_at_once]
        y = labels[i : i + images_at_once] if model.conditional else None
        mu, logvar = model.encode(x, y)
        sigma = torch.exp(0.5 * logvar)
        log_sum = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float64)
        total = torch.zeros(len(x), device=x.device, dtype=torch.float64)
        samples_at_once = max(1, per_chunk // len(x))
        for s in range(0, k, samples_at_once):
            m = min(samples_at_once, k - s)
            eps = torch.randn((m, *mu.shape), generator=generator, device=x.device)
            z = mu + sigma * eps  # (m, images, latent_dim)
            logits = model.decode_logits(z.flatten(0, 1), None if y is None else y.repeat(m)).view(m, len(x), -1)
            # log p(z) - log q(z|x) for diagonal Gaussians; the log(2 pi) terms cancel
            log_w = log_bernoulli(logits, x) + (0.5 * eps.square() - 0.5 * z.square() + 0.5 * logvar).sum(-1)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w.double(), 0))
            total += log_w.double().sum(0)
        elbo[i : i + len(x)] = -total / k
        iwae[i : i + len(x)] = math.log(k) - log_sum
    return elbo, iwae


# --- -log p(x) by integration over the latent plane ---------------------------------------------


def log_prior(z):
    """log N(z; 0, I)."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def midpoints(corners, side, cells):
    """The cells x cells midpoints of each square (lower-left corner, side): (squares, cells^2, 2)."""
    offsets = (torch.arange(cells, device=corners.device) + 0.5) * (side / cells)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).view(-1, 2)
    return corners[:, None, :] + grid


def log_masses(log_likelihood, z, index, spacing):
    """log of the midpoint rule over squares for images `index`: z (squares, points, 2) -> (len(index), squares)."""
    log_joint = log_likelihood(z.view(-1, 2), index).float() + log_prior(z.view(-1, 2))
    # logsumexp by hand, 3x faster than torch.logsumexp over 16 points: squares more than ~100 nats
    # below the image's best point of the call underflow to -inf, which is negligible
    top = log_joint.amax(1, keepdim=True)
    sums = log_joint.sub_(top).exp_().view(len(index), *z.shape[:2]).sum(-1)
    return sums.log_() + top + 2 * math.log(spacing)


def segment_logsumexp(values, segment, n):
    """logsumexp of values grouped by segment id, for ids 0..n-1 (-inf where a segment is empty)."""
    top = torch.full((n,), -math.inf, dtype=values.dtype, device=values.device).scatter_reduce(
        0, segment, values, "amax"
    )
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.zeros_like(top).scatter_add(0, segment, torch.exp(values - safe[segment]))
    return safe + torch.log(sums)


def bounding_box(held, edges):
    """z1_lo, z1_hi, z2_lo, z2_hi of the marked tiles, per image: held (images, side, side) bool, edges (side + 1,)."""
    side = held.shape[1]
    rows, cols = held.any(2), held.any(1)  # which z1 (rows) and z2 (columns) hold marked tiles
    first = rows.float().argmax(1), cols.float().argmax(1)
    last = side - 1 - rows.flip(1).float().argmax(1), side - 1 - cols.flip(1).float().argmax(1)
    return torch.stack([edges[first[0]], edges[last[0] + 1], edges[first[1]], edges[last[1] + 1]], 1)


def dilate(mask):
    """Add each marked tile's 8 neighbours: (images, side, side) bool."""
    return F.max_pool2d(mask.float(), 3, stride=1, padding=1) > 0


@torch.inference_mode()
def exact_nll(
    log_likelihood,
    n_images,
    max_log_likelihood=0.0,
    hints=None,
    tol=0.01,
    tile=0.5,
    cells=4,
    threshold=30.0,
    refine=15.0,
    margin=20.0,
    max_level=8,
    device="cpu",
):
    """-log p(x_i) = -log of the integral of p(x_i|z) N(z; 0, I) dz over the plane, for n_images images; z is 2-d.

    log_likelihood(z, index) -> (len(index), len(z)): log p(x_i|z_g) for the images `index` at the points z (G, 2).
    max_log_likelihood: per image (or one number), an upper bound of log p(x_i|z) over all z (0 for
    Bernoulli pixels of binary images); it tells how far out an image's posterior mass could be.
    hints: (n_images, 2), a point per image where its posterior is likely (e.g. the mean of q(z|x)).

    Level 0 cuts the plane into square tiles of side `tile` and integrates each on a cells x cells
    midpoint grid, in rings outwards from the origin. In 2-d the prior puts mass exp(-r^2/2) beyond
    radius r, and p(x_i|z) <= exp(max_log_likelihood_i), so beyond r_i with
    r_i^2 / 2 = max_log_likelihood_i - log(integral so far) + margin an image holds at most
    exp(-margin) of its p(x): its rings stop there. The tiles holding more than exp(-threshold) of an
    image's integral (generous: a narrow peak between the coarse points shows weaker), their neighbours
    and the hint's tile are then refined as a quadtree: each level splits the squares that hold more
    than exp(-refine) of the integral into four, which halves the spacing there, until the image's
    integral moves by less than tol nats. Images share the decoded
    grids: the squares of a level are integrated in blocks, one log_likelihood call per block.
    Nothing beyond MAX_RADIUS is integrated: an image whose r_i is larger (-log p(x) above ~780 nats plus
    its max log-likelihood) loses that guarantee.
    Returns (nll float64 (n_images,), info): info["box"] (n_images, 4) is z1_lo, z1_hi, z2_lo, z2_hi of the
    tiles that hold the mass, info["level"] the last level, info["radius"] r_i, info["converged"] bools
    (false where the integral still moved by tol at max_level, or r_i > MAX_RADIUS).
    """
    max_ll = torch.as_tensor(max_log_likelihood, dtype=torch.float64, device=device).expand(n_images)
    lattice, nearest = tiles_by_distance(tile, device)
    log_p, radius, parts, done = integrate_rings(log_likelihood, lattice, nearest, max_ll, tile, cells, margin)
    frozen, box, image, square = tiles_to_refine(parts, lattice[:done], log_p, hints, tile, threshold)
    del parts
    log_p, level, converged = refine_quadtree(
        log_likelihood, image, square, log_p, frozen, tile, cells, refine, tol, max_level
    )
    return -log_p, dict(box=box, level=level, radius=radius, converged=converged & (radius <= MAX_RADIUS))


def tiles_by_distance(tile, device):
    """The level-0 tiles (a, b) of the square |z1|, |z2| < MAX_RADIUS, nearest to the origin first.

    Tile (a, b) has its lower-left corner at (a, b) * tile. Returns (lattice (tiles, 2) long, nearest (tiles,)),
    nearest the distance from the origin of the tile's nearest point.
    """
    far = math.ceil(MAX_RADIUS / tile)
    a, b = torch.meshgrid(torch.arange(-far, far, device=device), torch.arange(-far, far, device=device), indexing="ij")
    lattice = torch.stack([a.flatten(), b.flatten()], 1)
    nearest = torch.clamp(torch.maximum(-(lattice + 1), lattice), min=0).float().norm(dim=1) * tile
    order = torch.argsort(nearest)
    return lattice[order], nearest[order]


def integrate_rings(log_likelihood, lattice, nearest, max_ll, tile, cells, margin):
    """Level 0: the tiles of `lattice` in order, each image up to its radius r_i (see exact_nll).

    Returns (log_p, radius, parts, done): per image the log of its integral so far and r_i; parts the
    integrated tiles as (start, index, masses): the log masses (len(index), tiles) of the images `index`
    at lattice[start : start + tiles]; done the number of tiles integrated for some image.
    """
    n_images, device = len(max_ll), max_ll.device
    log_p = torch.full((n_images,), -math.inf, dtype=torch.float64, device=device)
    radius = torch.full((n_images,), MAX_RADIUS, dtype=torch.float64, device=device)
    done, parts = 0, []
    while done < len(lattice):
        index = (radius > nearest[done]).nonzero().flatten()
        if len(index) == 0:
            break
        count = max(1, min(256, ROWS // (len(index) * cells * cells)))
        tiles = lattice[done : done + count]
        masses = log_masses(log_likelihood, midpoints(tiles * tile, tile, cells), index, tile / cells)
        parts.append((done, index, masses))
        log_p[index] = torch.logaddexp(log_p[index], torch.logsumexp(masses.double(), 1))
        radius[index] = torch.sqrt(2 * torch.clamp(max_ll[index] - log_p[index] + margin, min=0))
        done += len(tiles)
    return log_p, radius, parts, done


def tiles_to_refine(parts, lattice, log_p, hints, tile, threshold):
    """Which level-0 tiles of each image the quadtree refines: per image, its tiles as a dense side x side grid.

    Those holding more than exp(-threshold) of the image's integral, the hint's tile, and their neighbours,
    where the rings reached. lattice: the tiles that parts covers. Returns (frozen, box, image, square):
    per image the log mass of its other tiles and the bounding box of the tiles above the threshold (as
    exact_nll's info["box"]); a row per tile to refine, its image and lower-left corner in units of `tile`.
    """
    n_images, device = len(log_p), log_p.device
    k = int(lattice.abs().max()) + 1
    side = 2 * k
    column = (lattice[:, 0] + k) * side + (lattice[:, 1] + k)
    edges = torch.arange(-k, k + 1, device=device) * tile
    frozen = torch.empty(n_images, dtype=torch.float64, device=device)  # log mass of the squares not refined further
    box = torch.empty(n_images, 4, device=device)
    pairs = []
    chunk = max(1, ROWS // (side * side))
    for c in range(0, n_images, chunk):
        ids = torch.arange(c, min(c + chunk, n_images), device=device)
        tile_mass = torch.full((len(ids), side * side), -math.inf, device=device)
        reached = torch.zeros((len(ids), side * side), dtype=torch.bool, device=device)  # False beyond the radius
        for start, index, masses in parts:
            rows = (index >= c) & (index < c + len(ids))
            cols = column[start : start + masses.shape[1]]
            tile_mass[(index[rows] - c)[:, None], cols] = masses[rows]
            reached[(index[rows] - c)[:, None], cols] = True
        held = tile_mass >= (log_p[ids] - threshold).float()[:, None]
        active = held.clone()
        if hints is not None:
            ab = torch.floor(hints[ids].to(device) / tile).long().clamp(-k, k - 1) + k
            active[torch.arange(len(ids), device=device), ab[:, 0] * side + ab[:, 1]] = True
        active = dilate(active.view(-1, side, side)).view(len(ids), -1) & reached
        frozen[ids] = torch.logsumexp(torch.where(active, -math.inf, tile_mass), 1).double()
        box[ids] = bounding_box(held.view(-1, side, side), edges)
        image, t = active.nonzero(as_tuple=True)
        pairs.append((image + c, t))
    image, t = torch.cat([i for i, _ in pairs]), torch.cat([t for _, t in pairs])  # a row per (image, square)
    square = torch.stack([t // side - k, t % side - k], 1)  # lower-left corner, in units of the level's side
    return frozen, box, image, square


def refine_quadtree(log_likelihood, image, square, log_p, frozen, tile, cells, refine, tol, max_level):
    """Levels 1 to max_level: split each square (image, square) into four, integrate, keep those that hold mass.

    An image stops when its integral moves by less than tol nats; its squares below exp(-refine) of the
    integral join `frozen`, its log mass of squares not refined further. Returns (log_p, level, converged):
    log_p updated in place, the last level of each image, and whether its integral settled.
    """
    n_images, device = len(log_p), log_p.device
    level = torch.zeros(n_images, dtype=torch.long, device=device)
    converged = torch.zeros(n_images, dtype=torch.bool, device=device)
    for lvl in range(1, max_level + 1):
        if len(image) == 0:
            break
        image = image.repeat_interleave(4)
        square = (2 * square[:, None, :] + torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)).view(-1, 2)
        image, square, mass = level_masses(log_likelihood, image, square, tile, cells, lvl)
        todo = torch.unique(image)
        new = torch.logaddexp(frozen, segment_logsumexp(mass.double(), image, n_images))
        moved = torch.zeros(n_images, dtype=torch.float64, device=device)
        moved[todo] = (new[todo] - log_p[todo]).abs()
        log_p[todo], level[todo] = new[todo], lvl
        converged[todo] = moved[todo] < tol
        # go on with the squares that hold mass, of the images that moved; freeze the others
        keep = (moved[image] >= tol) & (mass >= (log_p[image] - refine).float())
        rest = ~keep & (moved[image] >= tol)
        frozen = torch.logaddexp(frozen, segment_logsumexp(mass[rest].double(), image[rest], n_images))
        image, square = image[keep], square[keep]
    return log_p, level, converged


def level_masses(log_likelihood, image, square, tile, cells, lvl):
    """The log mass of each (image, square) of level lvl: squares of side tile / 2^lvl, corners in units of it.

    Blocks of at most 4 x 4 squares share one log_likelihood call: the images of a block times its squares'
    points. Returns (image, square, mass), the rows sorted by block.
    """
    device = square.device
    size = tile / 2**lvl
    far = math.ceil(MAX_RADIUS / tile)  # level 0's tiles per half axis
    up = min(lvl, 2)
    block = square >> up  # floor division by 2^up, also for negative corners
    key = (block[:, 0] + (far << lvl)) * (4 * far << lvl) + block[:, 1] + (far << lvl)
    order = torch.argsort(key)
    image, square, key = image[order], square[order], key[order]
    mass = torch.empty(len(image), device=device)
    start = 0
    for count in torch.unique_consecutive(key, return_counts=True)[1].tolist():
        rows = slice(start, start + count)
        index, which_image = torch.unique(image[rows], return_inverse=True)
        squares, which_square = torch.unique(square[rows], dim=0, return_inverse=True)
        all_masses = log_masses(log_likelihood, midpoints(squares * size, size, cells), index, size / cells)
        mass[rows] = all_masses[which_image, which_square]
        start += count
    return image, square, mass


def model_log_likelihood(model, images, labels):
    """log_likelihood(z, index) for exact_nll: log p(x_i|z) of a model's Bernoulli decoder (CVAE: given y_i).

    It is linear in x, so all images at all points are one matmul, X (M, 784) @ L^T (784, G)
    minus the row sums of softplus(L), with L the logits at the G points (decoded once per digit for a CVAE).
    """

    def log_likelihood(z, index):
        x = images[index]
        if not model.conditional:
            logits = model.decode_logits(z).float()
            return x @ logits.T - softplus(logits).sum(1)
        y = labels[index]
        out = torch.empty(len(index), len(z), device=z.device)
        for digit in y.unique().tolist():
            rows = y == digit
            logits = model.decode_logits(z, torch.full((len(z),), digit, device=z.device)).float()
            out[rows] = x[rows] @ logits.T - softplus(logits).sum(1)
        return out

    return log_likelihood


def max_log_bernoulli(images):
    """Per image, the highest log p(x|z) of any decoder: sum_i x_i log x_i + (1-x_i) log(1-x_i); 0 for binary x."""
    return (torch.special.xlogy(images, images) + torch.special.xlogy(1 - images, 1 - images)).sum(1).double()


@torch.inference_mode()
def model_exact_nll(model, images, labels, **kw):
    """exact_nll for a trained 2-d model on these images; q(z|x)'s means are the hints."""
    return exact_nll(
        model_log_likelihood(model, images, labels),
        len(images),
        max_log_bernoulli(images),
        encode_means(model, images, labels),
        device=images.device,
        **kw,
    )
