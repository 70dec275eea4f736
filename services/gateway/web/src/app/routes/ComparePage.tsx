export function ComparePage() {
  return <div className="page">Compare</div>;
}
