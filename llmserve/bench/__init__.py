"""`llmserve bench`: the load generator (loadgen), its workloads and its command line."""
