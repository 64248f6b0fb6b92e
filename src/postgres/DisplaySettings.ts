/**
 * The session settings under which Postgres prints values, applied to the
 * snapshot transactions and to the replication connection alike, so that a
 * row reads the same whether it arrives in a snapshot or in the log.
 */
export const DisplaySettings: ReadonlyArray<readonly [name: string, value: string]> = [
  ["bytea_output", "hex"],
  ["DateStyle", "ISO, DMY"],
  ["TimeZone", "UTC"],
  ["extra_float_digits", "1"],
  ["IntervalStyle", "iso_8601"]
]

/**
 * The display settings as `SET` statements joined by `;` (one simple-query
 * round trip); `local` scopes them to the current transaction.
 */
export const displaySettingsSql = (scope: "session" | "local"): string =>
  DisplaySettings.map(([name, value]) =>
    `SET ${scope === "local" ? "LOCAL " : ""}${name} = '${value.replaceAll("'", "''")}'`
  ).join("; ")
