/**
 * `LIKE` / `ILIKE` patterns compiled once into a plain string test. `%` is any
 * sequence, `_` any one character (code point), the escape character (default
 * backslash, none when empty) makes the next character literal. `ILIKE` folds
 * ASCII letters only, as Postgres does under the `C` collation.
 */

/** A pattern Postgres would refuse, with Postgres's message. */
export class PatternError extends Error {}

type Token = { readonly kind: "lit"; readonly text: string } | { readonly kind: "any" } | { readonly kind: "one" }

const tokenize = (pattern: string, escape: string): ReadonlyArray<Token> => {
  const tokens: Array<Token> = []
  let lit = ""
  const chars = Array.from(pattern)
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!
    if (escape !== "" && c === escape) {
      if (i + 1 >= chars.length) throw new PatternError("LIKE pattern must not end with escape character")
      lit += chars[++i]!
    } else if (c === "%" || c === "_") {
      if (lit !== "") tokens.push({ kind: "lit", text: lit })
      lit = ""
      tokens.push(c === "%" ? { kind: "any" } : { kind: "one" })
    } else {
      lit += c
    }
  }
  if (lit !== "") tokens.push({ kind: "lit", text: lit })
  return tokens
}

const regexEscape = (s: string): string => s.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&")

const foldAscii = (s: string): string =>
  s.replace(/[A-Za-z]/g, (c) => `[${c.toLowerCase()}${c.toUpperCase()}]`)

/**
 * Compiles a pattern into a test on the subject string. Throws
 * `PatternError` for an escape string longer than one character or a pattern
 * ending in the escape character.
 */
export const compileLike = (pattern: string, escape: string, caseInsensitive: boolean): ((s: string) => boolean) => {
  if (Array.from(escape).length > 1) throw new PatternError("invalid escape string")
  const tokens = tokenize(pattern, escape)
  if (!caseInsensitive) {
    if (tokens.length === 0) return (s) => s === ""
    const [first, second] = tokens
    if (tokens.length === 1 && first!.kind === "lit") {
      const text = first.text
      return (s) => s === text
    }
    if (tokens.length === 1 && first!.kind === "any") return () => true
    if (tokens.length === 2 && first!.kind === "lit" && second!.kind === "any") {
      const text = first.text
      return (s) => s.startsWith(text)
    }
    if (tokens.length === 2 && first!.kind === "any" && second!.kind === "lit") {
      const text = second.text
      return (s) => s.endsWith(text)
    }
    if (tokens.length === 3 && first!.kind === "any" && second!.kind === "lit" && tokens[2]!.kind === "any") {
      const text = second.text
      return (s) => s.includes(text)
    }
  }
  let source = "^"
  for (const t of tokens) {
    if (t.kind === "any") source += "[^]*"
    else if (t.kind === "one") source += "[^]"
    else source += caseInsensitive ? foldAscii(regexEscape(t.text)) : regexEscape(t.text)
  }
  const re = new RegExp(source + "$", "u")
  return (s) => re.test(s)
}
