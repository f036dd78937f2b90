"""The one seeded stream every draw of trajectory matching comes from (docs/methods.md §4): experts, start epochs, synthetic
minibatches and the inner steps' seeds (the experts themselves: training.experts.ExpertPool)."""
import torch


class Sampler:
    """All the randomness of the outer loop, from one generator, with a state that checkpoints:
    experts cycle through shuffled lists; minibatches walk a permutation of the set in chunks, either one queue
    across iterations (`queue`) or, as the public code, a fresh permutation per iteration whose chunks that do
    not fit whole are dropped (`permutation`)."""

    def __init__(self, seed, num_experts, n, batch_size, mode="queue"):
        self.num_experts, self.n, self.batch_size, self.mode = num_experts, n, batch_size, mode
        self.generator = torch.Generator().manual_seed(seed)
        self.expert_queue = torch.empty(0, dtype=torch.long)
        self.batch_queue = torch.empty(0, dtype=torch.long)

    def expert(self):
        if len(self.expert_queue) == 0:
            self.expert_queue = torch.randperm(self.num_experts, generator=self.generator)
        expert, self.expert_queue = int(self.expert_queue[0]), self.expert_queue[1:]
        return expert

    def integer(self, high, count=1):
        return torch.randint(high, (count,), generator=self.generator)

    def batches(self, count):
        out = []
        if self.mode == "permutation":
            self.batch_queue = torch.empty(0, dtype=torch.long)
        for _ in range(count):
            if len(self.batch_queue) == 0 or (self.mode == "permutation" and len(self.batch_queue) < self.batch_size):
                self.batch_queue = torch.randperm(self.n, generator=self.generator)
            out.append(self.batch_queue[:self.batch_size])
            self.batch_queue = self.batch_queue[self.batch_size:]
        return out

    def state(self):
        return {"sampler_rng": self.generator.get_state(), "sampler_experts": self.expert_queue,
                "sampler_batches": self.batch_queue}

    def load_state(self, tensors):
        self.generator.set_state(tensors["sampler_rng"])
        self.expert_queue, self.batch_queue = tensors["sampler_experts"], tensors["sampler_batches"]

    def segment(self, max_start_epoch, steps):
        """One segment's draws in the stream's order: (expert, start epoch, its `steps` minibatches, the inner
        steps' seeds); they depend on the draws before them only, never on which process computes the segment."""
        expert, start = self.expert(), int(self.integer(max_start_epoch))
        return expert, start, self.batches(steps), self.integer(2 ** 62, steps)
