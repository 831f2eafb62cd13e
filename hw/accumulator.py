"""The MAC and accumulator banks of a PE.

Every entry from the walker is decoded (relative row index -> row), multiplied by its
activation and added into its row of its bank; end tokens are counted per bank, and a bank
whose layer has delivered every token is ``done``. The PE's reducer then drains the bank one
row per cycle (reading a row clears it) and releases it for the next inference. Two styles
(``geo.accumulators``):

- ``"distributed"``: one LUT-RAM memory per bank, read asynchronously into a register,
  accumulated a cycle later. A drain reads its bank beside an entry going into another:
  draining costs no MAC cycle.
- ``"block"``: one block RAM for all banks (iCE40 has no LUT RAM), a four-stage
  read-add-write with forwarding. A drain is an op in the same stream, put there by the
  walker in place of an entry (:class:`~hw.walker.ColumnWalker`): each drained row costs its
  PE one cycle, and the block RAM one read and one write.

Pipeline::

    distributed: D: row decode, product -> A0: read (LUT RAM, per-bank registers)
                 -> S: select the bank (forwarded) -> A: add (forwarded) -> W: write
                 (from registers)
    block:       D: row decode, product -> D2: address, read -> R: registered (forwarded)
                 -> A: add (forwarded), write

The deep pipeline puts a register stage before D (the operands) and after it (the product):
the DSP tile is often far from the PE's logic. The product's operand and product registers are
a :class:`~hw.multiply.Multiplier`'s, which a family with registered DSP tiles puts inside the
tile (fabric registers were placed beside the logic, not the DSP: docs/benchmarks.md).
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .images import REPLICA, Geometry, drain_layout
from .multiply import Multiplier
from .walker import ColumnWalker, op_layout

__all__ = ["MacBanks"]


def _select(values, index):
    """``values[index]`` as an AND-OR of one-hot terms (what LUT RAM outputs map to best)."""
    out = 0
    for k, value in enumerate(values):
        out = out | Mux(index == k, value, 0)
    return out


class MacBanks(wiring.Component):
    """Multiply-accumulate into ``geo.slots`` banks for a PE in grid column ``col``.

    Members
    -------
    i : In(stream.Signature(op_layout(geo), always_ready=True))
        Entries and end tokens from the column walker (block style: and drain ops).
    done : Out(slots)
        Bank ``s`` holds its whole layer's sums (every end token it waits for arrived and was
        accumulated after all entries before it); until released.
    drain : In(stream.Signature(drain_layout(geo), always_ready=True))
        Distributed style only: read (and clear) row ``addr`` of bank ``slot``; only of a
        ``done`` bank.
    partial : Out(signed(partial_width))
        The row a drain read, :meth:`drain_latency` cycles after the PE got the request.
    release : In(stream.Signature(range(slots), always_ready=True))
        Bank ``payload`` was drained: it takes the next inference.
    """

    def __init__(self, geo: Geometry, col: int):
        if not isinstance(geo, Geometry):
            raise TypeError(f"geo must be a Geometry, not {geo!r}")
        if not 0 <= col < geo.cols:
            raise ValueError(f"col must be in 0..{geo.cols - 1}, not {col!r}")
        self.geo, self.col = geo, col
        ports = {}
        if geo.accumulators == "distributed":
            ports = {"drain": In(stream.Signature(drain_layout(geo), always_ready=True))}
        super().__init__({
            "i": In(stream.Signature(op_layout(geo), always_ready=True)),
            "done": Out(geo.slots),
            **ports,
            "partial": Out(signed(geo.partial_width)),
            "release": In(stream.Signature(range(geo.slots), always_ready=True)),
        })

    @staticmethod
    def drain_latency(geo: Geometry) -> int:
        """Cycles from a drain request at the PE's port to its ``partial``: the PE's own
        register of the request (the reducer's reaches C PEs), the read into its bank's register,
        the bank's selected into ``partial`` (distributed); or through the walker's issue and entry stages, decode and the
        four-stage read-add (block)."""
        if geo.accumulators == "distributed":
            return 3
        return 1 + ColumnWalker.latency(geo) + 5 + (2 if geo.pipeline == "deep" else 0)

    def elaborate(self, platform):
        m = Module()
        geo, op, valid = self.geo, self.i.payload, self.i.valid
        deep = geo.pipeline == "deep"
        if deep:
            # I: the op again; its weight and activation in the multiplier's own operand
            # registers (inside the DSP tile where the family's tile has them: the DSPs sit in a
            # few rows of the chip, often far from the PE's logic), the rest beside the logic
            m.submodules.multiplier = mul = Multiplier(op.weight.shape(), op.act.shape())
            m.d.comb += [mul.a.eq(op.weight), mul.b.eq(op.act)]
            valid, op = Signal(name="i_valid"), Signal(op_layout(geo), name="i_op",
                                                       reset_less=True)
            m.d.sync += [valid.eq(self.i.valid), op.eq(self.i.payload)]

        # D: the row of this entry (relative index: rows skipped since the previous entry's),
        # and its product
        prev = Signal(geo.row_bits)
        row = Signal(geo.row_bits)
        m.d.comb += row.eq(Mux(op.first, op.gap, prev + op.gap + 1))
        with m.If(valid & ~op.end & ~op.drain):
            m.d.sync += prev.eq(row)
        d = {"valid": Signal(name="d_valid"), "end": Signal(name="d_end"),
             "drain": Signal(name="d_drain"), "slot": Signal.like(op.slot, name="d_slot"),
             "row": Signal(geo.row_bits, name="d_row", reset_less=True),
             "product": Signal(signed(16), name="d_product", reset_less=True)}
        m.d.sync += [d["valid"].eq(valid), d["end"].eq(op.end), d["drain"].eq(op.drain),
                     d["slot"].eq(op.slot), d["row"].eq(Mux(op.drain, op.row, row))]
        if deep:
            # the product from the multiplier's register (the tile's output register)
            m.d.comb += d["product"].eq(mul.p)
        else:
            m.d.sync += d["product"].eq(op.weight * op.act)
        before = valid & ~op.end                    # what D's writes flag is registered from
        if deep:
            # D2: the product (and the op) again, so the hop back from the DSP is split too
            d2 = {k: Signal.like(v, name=f"d2_{k}") for k, v in d.items()}
            m.d.sync += [d2[k].eq(v) for k, v in d.items()]
            before, d = d["valid"] & ~d["end"], d2
        if geo.accumulators == "distributed":
            token = self._distributed(m, d)
        else:
            token = self._block(m, d, before)

        # end tokens, per bank
        for s in range(geo.slots):
            expected = geo.expected_ends[self.col][geo.layer_of(s)]
            ends = Signal(range(expected + 1), name=f"ends{s}")
            with m.If(token["valid"] & token["end"] & (token["slot"] == s)):
                with m.If(ends == expected - 1):
                    m.d.sync += [ends.eq(0), self.done[s].eq(1)]
                with m.Else():
                    m.d.sync += ends.eq(ends + 1)
            with m.If(self.release.valid & (self.release.payload == s)):
                m.d.sync += self.done[s].eq(0)
        return m

    def _distributed(self, m, d):
        """A0: read the entry's row of its bank, and the drained row of another bank, into
        registers; S: select the entry's bank - or the sum one of the ops two and three ahead
        wrote to its row, which the read missed - into a register; A: add the product to it, or
        to the sum of the op just ahead (the newest), and register the write; W: write the sum
        (the drained row: 0). Each bank is one LUT-RAM memory whose read address is the MAC's
        row or, while that bank drains, the drain's; its write port is driven from registers
        only (address, enable, data), so the path into the LUT RAMs' write ports, which fans
        out to every LUT of the bank, is nothing but routing. The adder's operand is a 2:1
        multiplexer of two registers, as in the block style."""
        geo = self.geo
        width = geo.partial_width
        # the PE's own copies of the request every PE of its grid row gets (REPLICA: not to be
        # merged back into one register by synthesis)
        drain_valid = Signal(attrs=REPLICA)
        drain = Signal.like(self.drain.payload, attrs=REPLICA)
        m.d.sync += [drain_valid.eq(self.drain.valid), drain.eq(self.drain.payload)]
        reads, ports = [], []
        for s in range(geo.slots):
            depth = geo.row_slots[geo.layer_of(s)]
            # LUT RAM even where Yosys would take the read register for a block RAM's (its
            # clock-to-out then starts the add path)
            bank = memory.Memory(shape=signed(width), depth=depth, init=[],
                                 attrs={"ram_style": "distributed"})
            m.submodules[f"bank{s}"] = bank
            wp, rp = bank.write_port(), bank.read_port(domain="comb")
            m.d.comb += rp.addr.eq(Mux(drain_valid & (drain.slot == s), drain.addr, d["row"]))
            reads.append(rp.data)
            ports.append(wp)
        # S, A and W: the op a stage
        stages, before = [], d
        for name in ("s", "a", "w"):
            # data needs no reset (only the valid flag does): fewer loads on the reset net
            regs = {k: Signal.like(v, name=f"{name}_{k}", reset_less=k in ("row", "product"))
                    for k, v in before.items()}
            m.d.sync += [regs[k].eq(v) for k, v in before.items()]
            stages.append(regs)
            before = regs
        sreg, a, w = stages
        # every bank's read into its own register: the slot select comes after, from
        # registers (selecting among LUT-RAM outputs directly costs several times the logic)
        held = [Signal(signed(width), name=f"read{s}", reset_less=True)
                for s in range(geo.slots)]
        m.d.sync += [h.eq(r) for h, r in zip(held, reads)]
        a_drain_valid, a_drain = Signal(attrs=REPLICA), Signal.like(drain, attrs=REPLICA)
        m.d.sync += [a_drain_valid.eq(drain_valid), a_drain.eq(drain),
                     self.partial.eq(_select(held, a_drain.slot))]
        # the read (A0) missed what the ops one, two and three ahead (in S, A and W then)
        # write to the same row. Matched in A0 into registers; S folds in the sums of the ops
        # two and three ahead (written by then: `last`, `before_last`), A the one ahead's.
        writes = d["valid"] & ~d["end"]
        s_writes, a_writes, w_writes = Signal(), Signal(), Signal()
        m.d.sync += [s_writes.eq(writes), a_writes.eq(s_writes), w_writes.eq(a_writes)]

        def near(x, x_writes):
            return writes & x_writes & (d["slot"] == x["slot"]) & (d["row"] == x["row"])

        near_one, near_two, near_three = near(sreg, s_writes), near(a, a_writes), near(w, w_writes)
        s_hit_one, hit_two, hit_three, hit_one = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [s_hit_one.eq(near_one), hit_two.eq(near_two & ~near_one),
                     hit_three.eq(near_three & ~near_two & ~near_one), hit_one.eq(s_hit_one)]
        picks = [Signal(name=f"pick{s}") for s in range(geo.slots)]
        m.d.sync += [p.eq((d["slot"] == s) & ~near_one & ~near_two & ~near_three)
                     for s, p in enumerate(picks)]
        total, last, before_last = (Signal(signed(width), name=n, reset_less=True)
                                    for n in ("total", "total_last", "total_before_last"))
        chosen = Mux(hit_two, last, 0) | Mux(hit_three, before_last, 0)
        for p, h in zip(picks, held):
            chosen = chosen | Mux(p, h, 0)
        selected = Signal(signed(width), reset_less=True)
        m.d.sync += selected.eq(chosen)
        m.d.comb += total.eq(Mux(hit_one, last, selected) + a["product"])
        m.d.sync += [last.eq(total), before_last.eq(last)]
        # W: each bank's write, from registers
        data = Signal(signed(width), reset_less=True)
        m.d.sync += data.eq(total)
        for s, wp in enumerate(ports):
            clearing = a_drain_valid & (a_drain.slot == s)
            addr, en, clear = (Signal.like(wp.addr, name=f"w{s}_addr", reset_less=True),
                               Signal(name=f"w{s}_en"), Signal(name=f"w{s}_clear"))
            m.d.sync += [addr.eq(Mux(clearing, a_drain.addr, a["row"])), clear.eq(clearing),
                         en.eq(clearing | (a_writes & (a["slot"] == s)))]
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(Mux(clear, 0, data)), wp.en.eq(en)]
        return a

    def _block(self, m, d, before):
        """One block RAM for every bank (bank ``s`` from ``base[s]``). R: the read's data into a
        register (or the sum the op two ahead wrote in the cycle of the read, which it
        missed); A: add the product to it - or to the sum the op just ahead wrote, which the
        read missed too - and write (a drain op writes 0 and hands what it read on). Both
        matches are registered a cycle before they are used: no compare and at most one LUT
        ahead of the adder's carry chain."""
        geo = self.geo
        width = geo.partial_width
        depths = [geo.row_slots[geo.layer_of(s)] for s in range(geo.slots)]
        bases = [sum(depths[:s]) for s in range(geo.slots)]
        total_depth = max(1, sum(depths))
        addr_w = max(1, (total_depth - 1).bit_length())
        m.submodules.banks = banks = memory.Memory(shape=signed(width), depth=total_depth,
                                                   init=[], attrs={"no_rw_check": 1})
        wp, rp = banks.write_port(), banks.read_port()
        # D's address, the bank's base plus the row, into a register with the op (stage D2,
        # which reads): the add is not on the block RAM's address path
        addr = Signal(addr_w)
        d2 = {name: Signal.like(value, name=f"d2_{name}") for name, value in d.items()}
        m.d.sync += [d2[name].eq(value) for name, value in d.items()]
        m.d.sync += addr.eq(Array(Const(b, addr_w) for b in bases)[d["slot"]] + d["row"])
        m.d.comb += rp.addr.eq(addr)
        w_in = Signal()
        m.d.sync += w_in.eq(before)
        d = d2
        r = {name: Signal.like(value, name=f"r_{name}") for name, value in d.items()}
        a = {name: Signal.like(value, name=f"a_{name}") for name, value in d.items()}
        r_addr, a_addr = Signal(addr_w), Signal(addr_w)
        m.d.sync += [r[name].eq(value) for name, value in d.items()] + [r_addr.eq(addr)]
        m.d.sync += [a[name].eq(value) for name, value in r.items()] + [a_addr.eq(r_addr)]

        # ops that write (entries and drains), as a flag a stage
        w_d, w_r, w_a = Signal(), Signal(), Signal()
        m.d.sync += [w_d.eq(w_in), w_r.eq(w_d), w_a.eq(w_r)]

        def same(x, wx, y, wy):
            return wx & wy & (x["slot"] == y["slot"]) & (x["row"] == y["row"])

        last_value = Signal(signed(width))          # what A wrote in the cycle before
        hit_two, hit_one, next_one = Signal(), Signal(), Signal()
        # D and A now: R and the op two ahead (which writes at the edge R's read happens at);
        # D and R now: A and the op one ahead, a cycle later (the pipeline never stalls)
        m.d.sync += [hit_two.eq(same(d, w_d, a, w_a)), next_one.eq(same(d, w_d, r, w_r))]
        # R: what the read missed from the op two ahead, and a drain's 0 (it writes 0: its act,
        # so its product, is 0 - the walker's contract, see op_layout) resolved into registers,
        # so that A puts one 2:1 multiplexer in front of the adder's carry chain
        fresh = Mux(hit_two, last_value, rp.data)
        read, kept_read, use_last = Signal(signed(width)), Signal(signed(width)), Signal()
        m.d.sync += [read.eq(fresh), kept_read.eq(Mux(r["drain"], 0, fresh)),
                     use_last.eq(next_one & ~r["drain"]), hit_one.eq(next_one)]
        written = Signal(signed(width))
        writes = w_a
        m.d.comb += [written.eq(Mux(use_last, last_value, kept_read) + a["product"]),
                     wp.addr.eq(a_addr), wp.data.eq(written), wp.en.eq(writes)]
        m.d.sync += last_value.eq(written)
        with m.If(a["valid"] & a["drain"]):
            m.d.sync += self.partial.eq(Mux(hit_one, last_value, read))
        return a
