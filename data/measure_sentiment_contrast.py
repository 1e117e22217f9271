"""Measure the two numbers the datasheet promises: linear probe vs full fine-tuning.

    python data/measure_sentiment_contrast.py        # about 2 minutes on 2 CPU cores

Linear probe: logistic regression (scikit-learn, C=1) on frozen, mean-pooled
all-MiniLM-L6-v2 embeddings (the way the model is meant to be pooled).
Full fine-tuning: every weight of the embedded model + a fresh 2-class head, AdamW lr 5e-5,
batch 32, max 32 tokens, 2 epochs, seed 0.
"""

import time

import torch
from sklearn.linear_model import LogisticRegression

import peftlab as pl


def main() -> None:
    torch.set_num_threads(2)
    ds = pl.data.load_dataset()
    enc, tok = pl.models.text_encoder()
    t = time.time()
    x_tr, x_va, x_te = (pl.models.embed(s.texts, enc, tok)
                        for s in (ds.train, ds.validation, ds.test))
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr.numpy(), ds.train.labels)
    print(f"linear probe: validation {clf.score(x_va.numpy(), ds.validation.labels):.4f}, "
          f"test {clf.score(x_te.numpy(), ds.test.labels):.4f} ({time.time() - t:.0f} s)")

    torch.manual_seed(0)
    model, tok = pl.models.text_classifier(2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)

    def accuracy(split):
        model.eval()
        correct = 0
        with torch.no_grad():
            for b in split.loader(tok, 128):
                correct += (model(**b).logits.argmax(-1) == b["labels"]).sum().item()
        model.train()
        return correct / len(split)

    for epoch in range(2):
        t = time.time()
        for b in ds.train.loader(tok, 32, shuffle=True, seed=epoch):
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad()
        print(f"full fine-tuning epoch {epoch + 1}: validation {accuracy(ds.validation):.4f}, "
              f"test {accuracy(ds.test):.4f} ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
