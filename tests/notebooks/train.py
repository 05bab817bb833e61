"""The iris notebook as a script (benchmark baseline and script-job test)."""

import os

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import pai_lab

C = float(os.environ.get("C", "1.0"))
X, y = load_iris(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
model = LogisticRegression(C=C, max_iter=500).fit(Xtr, ytr)
acc = model.score(Xte, yte)
print(f"C={C} accuracy={acc:.4f}")
pai_lab.log_metric("accuracy", acc)
joblib.dump(model, "model.joblib")
print("saved model.joblib")
