"""p50/p99 (ms) and error count from an h2load --log-file (start, status, µs)."""
import sys

durations, errors = [], 0
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 3:
        continue
    status, micros = int(parts[1]), int(parts[2])
    if status != 200:
        errors += 1
    durations.append(micros)
durations.sort()
pick = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))] / 1000
print(f"n={len(durations)} p50={pick(0.50):.2f}ms p99={pick(0.99):.2f}ms non200={errors}")
