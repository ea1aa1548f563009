// An ordered map from numbers to values: an AVL tree (O(log n) insert,
// delete and floor search) whose entries are also linked in key order, so a
// walk from one entry to its neighbours costs O(1) a step.  The DMA mapping
// table and the dirty logs keep their IOVA ranges in one: with tens of
// thousands of mappings, sorted arrays made every map and unmap O(n)
// (Array.prototype.splice moves the tail) and UNMAP_ALL O(n^2).
//
// Deleting a node with two children moves its successor *node* into its
// place (instead of copying the successor's key and value), so an entry a
// caller holds stays the entry for its key until that key is deleted.

/** One entry, linked to its neighbours in key order. */
export interface SortedEntry<V> {
  readonly key: number;
  readonly value: V;
  /** The entry with the next larger key, or null. */
  readonly next: SortedEntry<V> | null;
  /** The entry with the next smaller key, or null. */
  readonly prev: SortedEntry<V> | null;
}

interface Node<V> {
  key: number;
  value: V;
  left: Node<V> | null;
  right: Node<V> | null;
  height: number;
  next: Node<V> | null;
  prev: Node<V> | null;
}

const h = <V>(n: Node<V> | null): number => (n === null ? 0 : n.height);

function fix<V>(n: Node<V>): void {
  const a = h(n.left);
  const b = h(n.right);
  n.height = (a > b ? a : b) + 1;
}

function rotateRight<V>(n: Node<V>): Node<V> {
  const l = n.left!;
  n.left = l.right;
  l.right = n;
  fix(n);
  fix(l);
  return l;
}

function rotateLeft<V>(n: Node<V>): Node<V> {
  const r = n.right!;
  n.right = r.left;
  r.left = n;
  fix(n);
  fix(r);
  return r;
}

function balance<V>(n: Node<V>): Node<V> {
  fix(n);
  const d = h(n.left) - h(n.right);
  if (d > 1) {
    if (h(n.left!.left) < h(n.left!.right)) n.left = rotateLeft(n.left!);
    return rotateRight(n);
  }
  if (d < -1) {
    if (h(n.right!.right) < h(n.right!.left)) n.right = rotateRight(n.right!);
    return rotateLeft(n);
  }
  return n;
}

/** Ordered map keyed by number (see the file header). */
export class SortedMap<V> {
  private root: Node<V> | null = null;
  private head: Node<V> | null = null;
  private tail: Node<V> | null = null;
  private n = 0;

  get size(): number {
    return this.n;
  }

  /** Height of the tree: at most about 1.44 log2(size + 2) (tests hold it to that). */
  get height(): number {
    return h(this.root);
  }

  /** The entry with the smallest key, or null. */
  get first(): SortedEntry<V> | null {
    return this.head;
  }

  /** The entry with the largest key, or null. */
  get last(): SortedEntry<V> | null {
    return this.tail;
  }

  /** The entry for `key`, or null. */
  get(key: number): SortedEntry<V> | null {
    let n = this.root;
    while (n !== null) {
      if (key < n.key) n = n.left;
      else if (key > n.key) n = n.right;
      else return n;
    }
    return null;
  }

  /** The entry with the largest key <= `key`, or null. */
  floor(key: number): SortedEntry<V> | null {
    let n = this.root;
    let best: Node<V> | null = null;
    while (n !== null) {
      if (key < n.key) n = n.left;
      else {
        best = n;
        if (key === n.key) break;
        n = n.right;
      }
    }
    return best;
  }

  /** The entry with the smallest key >= `key`, or null. */
  ceiling(key: number): SortedEntry<V> | null {
    let n = this.root;
    let best: Node<V> | null = null;
    while (n !== null) {
      if (key > n.key) n = n.right;
      else {
        best = n;
        if (key === n.key) break;
        n = n.left;
      }
    }
    return best;
  }

  /** Adds `key`; throws if it is present (callers check first). */
  insert(key: number, value: V): SortedEntry<V> {
    const node: Node<V> = { key, value, left: null, right: null, height: 1, next: null, prev: null };
    this.root = this.add(this.root, node);
    // Link it between its neighbours: its predecessor is the floor below it.
    const p = this.floorBelow(key);
    node.prev = p;
    node.next = p === null ? this.head : p.next;
    if (node.next !== null) node.next.prev = node;
    else this.tail = node;
    if (p !== null) p.next = node;
    else this.head = node;
    this.n++;
    return node;
  }

  /** Removes `key`; returns whether it was present. */
  delete(key: number): boolean {
    const before = this.n;
    this.root = this.remove(this.root, key);
    return this.n < before;
  }

  /** Removes everything (O(1): the nodes are left to the collector). */
  clear(): void {
    this.root = this.head = this.tail = null;
    this.n = 0;
  }

  /** The values in key order. */
  values(): V[] {
    const out: V[] = new Array(this.n);
    let i = 0;
    for (let e = this.head; e !== null; e = e.next) out[i++] = e.value;
    return out;
  }

  *[Symbol.iterator](): IterableIterator<V> {
    for (let e = this.head; e !== null; e = e.next) yield e.value;
  }

  private floorBelow(key: number): Node<V> | null {
    let n = this.root;
    let best: Node<V> | null = null;
    while (n !== null) {
      if (n.key < key) {
        best = n;
        n = n.right;
      } else n = n.left;
    }
    return best;
  }

  private add(n: Node<V> | null, node: Node<V>): Node<V> {
    if (n === null) return node;
    if (node.key < n.key) n.left = this.add(n.left, node);
    else if (node.key > n.key) n.right = this.add(n.right, node);
    else throw new Error(`SortedMap: key ${node.key} is already present`);
    return balance(n);
  }

  private remove(n: Node<V> | null, key: number): Node<V> | null {
    if (n === null) return null;
    if (key < n.key) n.left = this.remove(n.left, key);
    else if (key > n.key) n.right = this.remove(n.right, key);
    else {
      this.n--;
      if (n.prev !== null) n.prev.next = n.next;
      else this.head = n.next;
      if (n.next !== null) n.next.prev = n.prev;
      else this.tail = n.prev;
      if (n.left === null) return n.right;
      if (n.right === null) return n.left;
      // The successor node takes n's place in the tree.
      const s = n.next!;
      s.right = this.detachMin(n.right);
      s.left = n.left;
      return balance(s);
    }
    return balance(n);
  }

  /** The subtree without its leftmost node (which the caller reuses). */
  private detachMin(n: Node<V>): Node<V> | null {
    if (n.left === null) return n.right;
    n.left = this.detachMin(n.left);
    return balance(n);
  }
}
