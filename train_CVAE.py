"""Train the conditional VAE on MNIST:  python train_CVAE.py  (--help for the flags)

The CVAE models p(x|y), a digit's image given its label y: the one-hot label is appended
to the encoder's input, q(z|x, y), and to z at the decoder's input, p(x|z, y) (models.CVAE),
so the training step feeds it each image's label. Everything else is train.py's loop:
the loss (the negative ELBO, now a bound on -log p(x|y)), logging to runs/CVAE/RUN_NAME/,
checkpoints and --resume. What differs is below: its defaults, and its grid of samples,
out_CVAE/RUN_NAME/NNN.png, which has one row per digit.
"""

import train

CHANGES = dict(  # to train.py's defaults
    epochs=20,  # as the original
    lr=1.6e-2,  # the CVAE gains from a higher peak learning rate in its 20 epochs (runs/recipes/README.md)
    warmup_epochs=2.0,
    out_dir="out_CVAE",
)

if __name__ == "__main__":
    # pictures.prior_grid draws the CVAE's grid: row r is digit r (0 at the top), and each column keeps
    # its noise z down the rows, so that it keeps its style (slant, width, stroke) across the digits
    train.main("CVAE", CHANGES)
