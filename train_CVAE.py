"""Train the conditional VAE on MNIST:  python train_CVAE.py  (--help for the flags)

The same training as train.py, for the CVAE: the one-hot digit label is appended to
the encoder's input and to z. Logs go to runs/CVAE/RUN_NAME/, and each epoch's grid
out_CVAE/NNN.png has one row per digit 0-9.
"""
import train

if __name__ == "__main__":
    # 20 epochs, as the original; the CVAE gains from a higher peak learning rate (README, "Choosing the defaults")
    train.main("CVAE", epochs=20, out_dir="out_CVAE", lr=1.6e-2, warmup_epochs=2.0)
