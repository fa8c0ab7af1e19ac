import json, sys, urllib.request, torch
from transformers import AutoModel, AutoTokenizer
d = "/work/main/.data/engine/models/all-minilm-l6-v2"
texts = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog."]
tok = AutoTokenizer.from_pretrained(d); m = AutoModel.from_pretrained(d).eval()
b = tok(texts, padding=True, return_tensors="pt")
with torch.no_grad(): h = m(**b).last_hidden_state
mask = b["attention_mask"].unsqueeze(-1).float()
ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
port = sys.argv[1]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", json.dumps({"model": "m", "input": texts}).encode(), {"Content-Type": "application/json"})
got = torch.tensor([x["embedding"] for x in json.load(urllib.request.urlopen(req))["data"]])
print("dims", got.shape, "cos vs transformers:", torch.nn.functional.cosine_similarity(got, ref).tolist(), "norms", got.norm(dim=-1).tolist())
print("cross-sim vllm", (got[0] @ got[1]).item(), "ref", (ref[0] @ ref[1]).item())
