/** pgoutput messages built byte by byte, as the walsender sends them. */

export class Bytes {
  private readonly parts: Array<Buffer> = []
  char(c: string): this {
    this.parts.push(Buffer.from(c, "latin1"))
    return this
  }
  u8(n: number): this {
    this.parts.push(Buffer.from([n]))
    return this
  }
  /** A big-endian integer of `size` bytes, as `write` puts it. */
  private int(size: number, write: (b: Buffer) => unknown): this {
    const b = Buffer.alloc(size)
    write(b)
    this.parts.push(b)
    return this
  }
  i16(n: number): this {
    return this.int(2, (b) => b.writeInt16BE(n))
  }
  i32(n: number): this {
    return this.int(4, (b) => b.writeInt32BE(n))
  }
  u32(n: number): this {
    return this.int(4, (b) => b.writeUInt32BE(n))
  }
  u64(n: bigint): this {
    return this.int(8, (b) => b.writeBigUInt64BE(n))
  }
  cstr(s: string): this {
    this.parts.push(Buffer.from(s, "utf8"), Buffer.from([0]))
    return this
  }
  /** A TupleData: string = text, null = 'n', undefined = 'u'. */
  tuple(values: ReadonlyArray<string | null | undefined>): this {
    this.i16(values.length)
    for (const v of values) {
      if (v === null) this.char("n")
      else if (v === undefined) this.char("u")
      else {
        const bytes = Buffer.from(v, "utf8")
        this.char("t").i32(bytes.length)
        this.parts.push(bytes)
      }
    }
    return this
  }
  build(): Buffer {
    return Buffer.concat(this.parts)
  }
}

export const begin = (finalLsn: bigint, xid: number) =>
  new Bytes().char("B").u64(finalLsn).u64(757_000_000_123_456n).u32(xid).build()
export const commit = (commitLsn: bigint, endLsn: bigint) =>
  new Bytes().char("C").u8(0).u64(commitLsn).u64(endLsn).u64(757_000_000_123_999n).build()
